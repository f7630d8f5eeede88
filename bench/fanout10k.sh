#!/usr/bin/env bash
# Fan-out benchmarks (issue 11): a 10,000-member group, before and after, beside the
# gorilla baseline, in one sitting. Usage:
#
#   bench/fanout10k.sh BEFORE_BIN AFTER_BIN OUTDIR [which...]
#
# which: burst (default), loops, loopsrate, steady, steadyacks, or all (not loopsrate, steadyacks). BEFORE_BIN and AFTER_BIN
# are magpie binaries (the server under test); the harness and the baseline
# always come from AFTER_BIN (it has --publishers and --ack-mode). Ports
# 17070-17081; data and tokens under OUTDIR/data-before and OUTDIR/data-after. Each run writes
# OUTDIR/<name>.json; the summary table goes to stdout.
set -euo pipefail
BEFORE=${1:?before binary}
AFTER=${2:?after binary}
OUT=${3:?output dir}
shift 3
WHICH=${*:-burst}
[ "$WHICH" = all ] && WHICH="burst loops steady"
MEMBERS=${MEMBERS:-10000}
WS=127.0.0.1:17070
HT=127.0.0.1:17080
BL=127.0.0.1:17071
# Each binary gets its own data dir (and tokens), imported by that binary:
# a release that predates a storage format cannot open a newer one.
# use BIN sets DATA, TOK and the harness flags H for BIN's data dir.
use() {
	local side=before
	[ "$1" = "$AFTER" ] && side=after
	DATA=$OUT/data-$side
	TOK=$DATA/tokens.txt
	mkdir -p "$DATA"
	[ -f "$TOK" ] || "$1" user import --data "$DATA" --prefix u --count $((MEMBERS + 4)) --password pw --tokens "$TOK" >/dev/null
	H=(--url ws://$WS/ws --http http://$HT --tokens "$TOK" --members "$MEMBERS")
}
SRV_PID=

start_server() { # bin, extra serve flags...
	local bin=$1
	shift
	use "$bin"
	"$bin" serve --data "$DATA" --listen $WS --http $HT --send-rate 0 "$@" 2>"$OUT/server.log" &
	SRV_PID=$!
	for _ in $(seq 200); do
		curl -fs "http://$HT/healthz" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "server did not start" >&2
	return 1
}
stop_server() {
	[ -n "$SRV_PID" ] && kill -TERM "$SRV_PID" && wait "$SRV_PID" || true
	SRV_PID=
}
start_baseline() {
	use "$AFTER"
	"$AFTER" bench baseline --listen $BL --data "$DATA" --mode proto 2>"$OUT/baseline.log" &
	SRV_PID=$!
	sleep 1
}
trap stop_server EXIT

# run NAME HARNESS_FLAGS...: one harness run against the server started.
run() {
	local name=$1
	shift
	echo "== $name (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
	"$AFTER" bench fanout "$@" --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1 || echo "   (failed: see $OUT/$name.txt)" >&2
}

BURST=(--publishers 4 --messages 200 --rate 0 --window 1)
for w in $WHICH; do
	case $w in
	burst)
		for mode in now welcome; do
			start_server "$BEFORE"
			run "burst-before-$mode" "${H[@]}" "${BURST[@]}" --ack-mode $mode
			stop_server
			start_server "$AFTER"
			run "burst-after-$mode" "${H[@]}" "${BURST[@]}" --ack-mode $mode
			stop_server
		done
		start_baseline
		run burst-baseline --url ws://$BL/ws --http http://$BL --tokens "$TOK" --members "$MEMBERS" "${BURST[@]}" --target baseline --ack=false
		stop_server
		;;
	loops)
		for l in 1 2 8 32; do
			for side in before after; do
				bin=$BEFORE
				[ $side = after ] && bin=$AFTER
				start_server "$bin" --loops $l
				run "loops$l-$side" "${H[@]}" "${BURST[@]}" --ack-mode welcome
				stop_server
			done
		done
		;;
	loopsrate)
		# The loop-count series at a fixed offered rate (10 msg/s from one
		# publisher) instead of the closed-loop burst: after only.
		for l in 1 2 8 32; do
			start_server "$AFTER" --loops $l
			run "loopsrate$l-after" "${H[@]}" --publishers 1 --rate 10 --messages 100 --ack-mode welcome
			stop_server
		done
		;;
	steadyacks)
		# The steady case with the same client work on both servers: Magpie
		# and the baseline with clients that ack every push (the baseline
		# reads acks and ignores them), beside Magpie with coalescing clients
		# and the baseline without acks. After only.
		STEADY=(--publishers 1 --rate 5 --messages 50)
		for mode in now welcome; do
			start_server "$AFTER"
			run "steadyacks-after-$mode" "${H[@]}" "${STEADY[@]}" --ack-mode $mode
			stop_server
		done
		for ack in now none; do
			A=(--ack-mode now)
			[ $ack = none ] && A=(--ack=false)
			start_baseline
			run "steadyacks-baseline-$ack" --url ws://$BL/ws --http http://$BL --tokens "$TOK" --members "$MEMBERS" "${STEADY[@]}" --target baseline "${A[@]}"
			stop_server
		done
		;;
	steady)
		for side in before after; do
			bin=$BEFORE
			[ $side = after ] && bin=$AFTER
			start_server "$bin"
			run "steady-$side" "${H[@]}" --publishers 1 --rate 5 --messages 50 --ack-mode welcome
			stop_server
		done
		start_baseline
		run steady-baseline --url ws://$BL/ws --http http://$BL --tokens "$TOK" --members "$MEMBERS" --publishers 1 --rate 5 --messages 50 --target baseline --ack=false
		stop_server
		;;
	esac
done

# Summary: one line per run.
printf '%-22s %10s %10s %12s %9s %9s %9s %6s %8s\n' run deliveries cpu_s us/deliv deliv/cpu_s p99_ms p99.9_ms ooo load
for f in "$OUT"/*.json; do
	jq -r --arg n "$(basename "$f" .json)" '[$n, .results.deliveries, (.results.server_cpu_seconds // 0 | .*100|round/100),
	  (.results.server_cpu_us_per_delivery // 0 | .*100|round/100), (.results.deliveries_per_server_cpu_second // 0 | round),
	  .latency_ms.delivery.p99, .latency_ms.delivery.p99_9, (.results.out_of_order // 0), (.machine.loadavg_before // "" | split(" ")[0])] | @tsv' "$f" |
		awk -F'\t' '{printf "%-22s %10s %10s %12s %9s %9s %9s %6s %8s\n",$1,$2,$3,$4,$5,$6,$7,$8,$9}'
done
