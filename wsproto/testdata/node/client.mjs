// Interop client for wsproto's TestInteropNode, using the npm package "ws".
// Usage: node client.mjs ws://127.0.0.1:PORT/ws?token=...
// It sends a fragmented text message (and expects it echoed whole), a ping
// (and expects a pong with the same payload), then closes with 4000 and
// expects the server to echo that code. Exit status 0 means every step
// passed; failures are printed to stderr.
import { WebSocket } from 'ws';

const url = process.argv[2];
if (!url) {
  console.error('usage: node client.mjs URL');
  process.exit(2);
}

const fail = (msg) => {
  console.error('FAIL: ' + msg);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 10000).unref();

// Multi-byte characters, cut into fragments that split some of them.
const message = 'héllo wörld — ☃ '.repeat(40);
const bytes = Buffer.from(message, 'utf8');
const pingPayload = Buffer.from('node-ping-7');

const ws = new WebSocket(url, { perMessageDeflate: false });
const steps = [];

ws.on('error', (err) => fail('socket error: ' + err.message));
ws.on('unexpected-response', (_req, res) => fail('handshake status ' + res.statusCode));

ws.on('open', () => {
  // ws sends each call with fin:false as one frame; the first is a text
  // frame, the rest continuations.
  const piece = 61;
  for (let i = 0; i < bytes.length; i += piece) {
    const last = i + piece >= bytes.length;
    ws.send(bytes.subarray(i, i + piece), { binary: false, fin: last });
  }
});

ws.on('message', (data, isBinary) => {
  if (isBinary) fail('echo arrived as binary');
  if (data.toString('utf8') !== message) fail(`echo differs: ${data.length} bytes`);
  steps.push('echo');
  ws.ping(pingPayload);
});

ws.on('pong', (data) => {
  if (!data.equals(pingPayload)) fail(`pong payload ${JSON.stringify(data.toString())}`);
  steps.push('pong');
  ws.close(4000, 'bye');
});

ws.on('close', (code) => {
  if (code !== 4000) fail(`close code ${code}, want 4000`);
  steps.push('close');
  if (steps.join(',') !== 'echo,pong,close') fail('steps ' + steps.join(','));
  console.log('ok ' + steps.join(','));
  process.exit(0);
});
