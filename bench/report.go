package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/magpie-im/magpie/internal/buildinfo"
)

var httpClient = &http.Client{Timeout: 5 * time.Second}

// Report is the outcome of one run; its JSON form is the --json file.
type Report struct {
	Scenario string                 `json:"scenario"`
	Target   string                 `json:"target"`
	Start    time.Time              `json:"start"`
	Seconds  float64                `json:"seconds"`
	Machine  Machine                `json:"machine"`
	Params   map[string]any         `json:"params"`
	Results  map[string]any         `json:"results"`
	Latency  map[string]LatencyStat `json:"latency_ms"`
	Counters counters               `json:"client_counters"`
	// Build is the harness's build; ServerBuild the labels of the server's
	// magpie_build_info gauge (absent for servers without it).
	Build       buildinfo.Info    `json:"build"`
	ServerBuild map[string]string `json:"server_build,omitempty"`
	// Warnings say which figures not to trust, and why.
	Warnings []string `json:"warnings,omitempty"`

	paramKeys, resultKeys, latKeys []string
}

// Machine describes where the run happened.
type Machine struct {
	NProc      int    `json:"nproc"`
	CPU        string `json:"cpu"`
	LoadBefore string `json:"loadavg_before"`
	LoadAfter  string `json:"loadavg_after"`
	Go         string `json:"go"`
}

// LatencyStat is a histogram's summary in milliseconds.
type LatencyStat struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

func newReport(o *options) *Report {
	r := &Report{
		Scenario: o.scenario, Target: o.target, Start: time.Now(),
		Machine: Machine{NProc: runtime.NumCPU(), CPU: cpuModel(), LoadBefore: loadavg(), Go: runtime.Version()},
		Params:  map[string]any{}, Results: map[string]any{}, Latency: map[string]LatencyStat{},
		Build: buildinfo.Get(),
	}
	r.param("url", o.wsURL)
	r.param("procs", o.procs)
	r.param("src", o.src)
	r.param("ack", o.ack)
	switch o.scenario {
	case "connect":
		r.param("conns", o.conns)
		r.param("hold", o.hold.String())
	case "p2p":
		r.param("pairs", o.pairs)
		r.param("rate", o.rate)
		r.param("window", o.window)
		r.param("duration", o.duration.String())
		r.param("size", o.size)
	case "fanout":
		r.param("members", o.members)
		r.param("rate", o.rate)
		r.param("messages", o.messages)
		r.param("window", o.window)
		r.param("size", o.size)
	case "storm":
		r.param("conns", o.conns)
		r.param("rate", o.rate)
		r.param("messages", o.messages)
		r.param("kill", o.kill)
	case "soak":
		r.param("conns", o.conns)
		r.param("duration", o.duration.String())
		r.param("rate", o.rate)
		r.param("group_frac", o.groupFrac)
		r.param("groups", o.groups)
		r.param("group_size", o.groupSize)
		r.param("churn", o.churn)
		r.param("clean_frac", o.cleanFrac)
		r.param("window", o.window)
		r.param("size", o.size)
	}
	if o.spawn {
		r.param("server_args", strings.Join(o.serverArgs, " "))
	}
	return r
}

func (r *Report) param(k string, v any) {
	if _, ok := r.Params[k]; !ok {
		r.paramKeys = append(r.paramKeys, k)
	}
	r.Params[k] = v
}

func (r *Report) result(k string, v any) {
	if _, ok := r.Results[k]; !ok {
		r.resultKeys = append(r.resultKeys, k)
	}
	r.Results[k] = v
}

func (r *Report) latency(k string, h *hdrhistogram.Histogram) {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	if _, ok := r.Latency[k]; !ok {
		r.latKeys = append(r.latKeys, k)
	}
	r.Latency[k] = LatencyStat{
		Count: h.TotalCount(), Mean: h.Mean() / 1000,
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()),
	}
}

func (r *Report) warn(format string, a ...any) {
	r.Warnings = append(r.Warnings, fmt.Sprintf(format, a...))
}

func (r *Report) finish() {
	r.Seconds = time.Since(r.Start).Seconds()
	r.Machine.LoadAfter = loadavg()
}

func (r *Report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// print writes the human table.
func (r *Report) print(w io.Writer) {
	fmt.Fprintf(w, "\nmagpie bench %s — target %s — %s, %d CPUs, load %s → %s, %.1fs\n",
		r.Scenario, r.Target, r.Machine.CPU, r.Machine.NProc, r.Machine.LoadBefore, r.Machine.LoadAfter, r.Seconds)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	var ps []string
	for _, k := range r.paramKeys {
		ps = append(ps, fmt.Sprintf("%s=%v", k, r.Params[k]))
	}
	fmt.Fprintf(w, "harness: %s\n", r.Build)
	if len(r.ServerBuild) > 0 {
		fmt.Fprintf(w, "server:  magpie %s (revision %s, %s)\n", r.ServerBuild["version"], r.ServerBuild["revision"], r.ServerBuild["go"])
	}
	fmt.Fprintf(w, "params: %s\n\n", strings.Join(ps, " "))
	for _, k := range r.resultKeys {
		fmt.Fprintf(tw, "  %s\t%s\n", k, fmtVal(r.Results[k]))
	}
	tw.Flush()
	if len(r.latKeys) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(tw, "  latency (ms)\tcount\tmean\tp50\tp90\tp99\tp99.9\tmax\n")
		for _, k := range r.latKeys {
			l := r.Latency[k]
			fmt.Fprintf(tw, "  %s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\n", k, l.Count, l.Mean, l.P50, l.P90, l.P99, l.P999, l.Max)
		}
		tw.Flush()
	}
	if len(r.Counters.CloseCodes) > 0 {
		fmt.Fprintf(w, "\n  close codes and failed attempts seen by clients: %v\n", r.Counters.CloseCodes)
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintln(w)
		for _, s := range r.Warnings {
			fmt.Fprintf(w, "  warning: %s\n", s)
		}
	}
	fmt.Fprintln(w)
}

func fmtVal(v any) string {
	switch x := v.(type) {
	case float64:
		switch {
		case x == float64(int64(x)) && x < 1e15 && x > -1e15:
			return fmt.Sprintf("%d", int64(x))
		case x >= 100 || x <= -100:
			return fmt.Sprintf("%.0f", x)
		default:
			return fmt.Sprintf("%.4g", x)
		}
	default:
		return fmt.Sprint(v)
	}
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
