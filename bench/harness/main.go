// Command harness runs the side-by-side benchmark of bench/run.sh (which builds it, installs
// what it needs and explains the settings): flatten against CoreDNS's file and cache plugins,
// PowerDNS ALIAS and the limit of CoreDNS (its erratic plugin), plus the cold path, a thundering
// herd, 100,000 configured aliases, 10,000 server blocks on one listener, zone transfers to an
// NSD secondary, and agency changes followed by 100 flattened client zones (a BIND 9 primary
// sending NOTIFY, or the agency zone served by the same CoreDNS). Every server listens on
// 127.0.0.1 only, pinned to one core; the load generators run on the other.
// It writes the results to RESULTS (markdown) and OUT/results.json, and raw output under OUT.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is read from the environment (bench/run.sh documents each variable).
type config struct {
	Rounds        int           `json:"rounds"`
	Duration      int           `json:"duration_s"`    // each max-QPS run and each fixed-rate run
	CalDuration   int           `json:"calibration_s"` // the warm-up run of each row that sets the fixed rate
	FixedQPS      int           `json:"fixed_qps"`     // 0: half the slowest row's warm-up QPS
	Clients       int           `json:"clients"`       // dnsperf -c
	Outstanding   int           `json:"outstanding"`   // dnsperf -q
	TTL           int           `json:"ttl"`
	Aliases       int           `json:"aliases"`
	Sample        int           `json:"sample"`         // names of the big case (blocks of the blocks case) in its dnsperf file
	Blocks        int           `json:"blocks"`         // server blocks of the blocks case
	BlocksRounds  int           `json:"blocks_rounds"`  // max-QPS runs of each server of the blocks case
	BlocksStarts  int           `json:"blocks_starts"`  // starts of each server of the blocks case, for its memory
	BlocksTimeout time.Duration `json:"blocks_timeout"` // from exec to ready, for each server of the blocks case
	RefreshRate   int           `json:"refresh_rate"`   // 0: not written (the plugin's default applies)
	BigDelay      string        `json:"big_delay"`
	ColdDelay     string        `json:"cold_delay"`
	ColdReps      int           `json:"cold_reps"`
	HerdN         int           `json:"herd_n"`
	XfrChanges    int           `json:"xfr_changes"`    // address changes of the transfer case
	XfrNames      int           `json:"xfr_names"`      // ALIAS records of its big.test
	AgencyChanges int           `json:"agency_changes"` // address changes of each agency case
	ServerCPU     int           `json:"server_cpu"`
	LoadCPU       int           `json:"load_cpu"`
	Phases        string        `json:"phases"`
	GoBenchCount  int           `json:"go_bench_count"`
	ForeignMax    float64       `json:"foreign_max"` // a run is repeated when others took more of the server core
	Retries       int           `json:"retries"`
	QuietWait     time.Duration `json:"quiet_wait"`
	ExtraBudget   time.Duration `json:"extra_budget"` // all quiet waits and repeats together
	Quick         bool          `json:"quick"`

	Out      string `json:"-"`
	Results  string `json:"-"`
	CoreDNS  string `json:"-"`
	Target   string `json:"-"`
	Herd     string `json:"-"`
	ClkTck   int    `json:"-"`
	RepoRoot string `json:"-"`
}

func env(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "harness: %s=%q is not a whole number\n", name, v)
			os.Exit(2)
		}
		return n
	}
	return def
}

func envStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func loadConfig() config {
	quick := os.Getenv("QUICK") == "1"
	c := config{Quick: quick}
	pick := func(full, q int) int {
		if quick {
			return q
		}
		return full
	}
	c.Rounds = env("ROUNDS", pick(5, 3))
	c.Duration = env("DURATION", pick(6, 2))
	c.CalDuration = env("CAL_DURATION", pick(3, 1))
	c.FixedQPS = env("FIXED_QPS", 0)
	c.Clients = env("CLIENTS", 8)
	c.Outstanding = env("OUTSTANDING", 200)
	c.TTL = env("TTL", 30)
	c.Aliases = env("ALIASES", pick(100000, 10000))
	c.Sample = env("SAMPLE", 10000)
	c.Blocks = env("BLOCKS", pick(10000, 1000))
	c.BlocksRounds = env("BLOCKS_ROUNDS", min(c.Rounds, 3))
	c.BlocksStarts = env("BLOCKS_STARTS", pick(5, 2))
	c.BlocksTimeout = time.Duration(env("BLOCKS_TIMEOUT", pick(900, 180))) * time.Second
	c.RefreshRate = env("RATE", 0)
	c.BigDelay = envStr("BIG_DELAY", "0s")
	c.ColdDelay = envStr("COLD_DELAY", "20ms")
	c.ColdReps = env("COLD_REPS", pick(5, 3))
	c.HerdN = env("HERD_N", 1000)
	c.XfrChanges = env("XFR_CHANGES", 10)
	c.XfrNames = env("XFR_NAMES", 10000)
	c.AgencyChanges = env("AGENCY_CHANGES", pick(10, 3))
	c.ServerCPU = env("SERVER_CPU", 0)
	c.LoadCPU = env("LOAD_CPU", 1)
	c.ForeignMax = float64(env("FOREIGN_MAX", 10)) / 100
	c.Retries = env("RETRIES", pick(2, 1))
	c.QuietWait = time.Duration(env("QUIET_WAIT", pick(10, 2))) * time.Second
	c.ExtraBudget = time.Duration(env("EXTRA_BUDGET", pick(180, 20))) * time.Second
	c.Phases = envStr("PHASES", "rows,cold,herd,big,blocks,transfer,agency,gobench")
	c.GoBenchCount = env("GOBENCH_COUNT", pick(5, 1))
	c.Out = envStr("OUT", "bench/out")
	c.Results = envStr("RESULTS", "bench/RESULTS.md")
	c.CoreDNS = envStr("COREDNS", filepath.Join(c.Out, "coredns"))
	c.Target = envStr("TARGET", filepath.Join(c.Out, "bin", "target"))
	c.Herd = envStr("HERD", filepath.Join(c.Out, "bin", "herd"))
	c.ClkTck = env("CLK_TCK", 100)
	c.RepoRoot = envStr("REPO", ".")
	if c.Rounds < 3 {
		fmt.Fprintln(os.Stderr, "harness: ROUNDS must be at least 3 (medians of alternating rounds)")
		os.Exit(2)
	}
	if c.XfrChanges < 1 || c.XfrNames < 1 {
		fmt.Fprintln(os.Stderr, "harness: XFR_CHANGES and XFR_NAMES must be at least 1")
		os.Exit(2)
	}
	if c.AgencyChanges < 1 {
		fmt.Fprintln(os.Stderr, "harness: AGENCY_CHANGES must be at least 1")
		os.Exit(2)
	}
	if c.BlocksRounds < 1 || c.BlocksStarts < 1 {
		fmt.Fprintln(os.Stderr, "harness: BLOCKS_ROUNDS and BLOCKS_STARTS must be at least 1")
		os.Exit(2)
	}
	return c
}

// harness is one run.
type harness struct {
	cfg   config
	ctx   context.Context
	procs *procs
	ports ports
	extra time.Duration // spent on quiet waits and repeated runs so far
	dir   string        // configs and zone files
	raw   string        // raw dnsperf and herd output
	res   results
}

// results is everything measured, written to results.json and rendered to RESULTS.md.
type results struct {
	Config       config          `json:"config"`
	Started      time.Time       `json:"started"`
	Finished     time.Time       `json:"finished"`
	Versions     []kv            `json:"versions"`
	Machine      []kv            `json:"machine"`
	Rows         *rowsResult     `json:"rows,omitempty"`
	Cold         []coldResult    `json:"cold,omitempty"`
	Herd         []herdResult    `json:"herd,omitempty"`
	Big          *bigResult      `json:"big,omitempty"`
	Blocks       *blocksResult   `json:"blocks,omitempty"`
	Transfer     *transferResult `json:"transfer,omitempty"`
	Agency       *agencyResult   `json:"agency,omitempty"`
	GoBench      []goBench       `json:"go_bench,omitempty"`
	GoBenchCount int             `json:"go_bench_count,omitempty"`
}

type kv struct {
	K string `json:"k"`
	V string `json:"v"`
}

func main() {
	cfg := loadConfig()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	h := &harness{cfg: cfg, ctx: ctx}
	err := h.run()
	h.procs.stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		if ctx.Err() != nil {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

func (h *harness) phase(name string) bool {
	for _, p := range strings.Split(h.cfg.Phases, ",") {
		if strings.TrimSpace(p) == name {
			return true
		}
	}
	return false
}

func (h *harness) logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: [%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func (h *harness) run() error {
	h.res.Config = h.cfg
	h.res.Started = time.Now().UTC()
	h.dir = filepath.Join(h.cfg.Out, "run")
	h.raw = filepath.Join(h.cfg.Out, "raw")
	logs := filepath.Join(h.cfg.Out, "logs")
	for _, d := range []string{h.dir, h.raw, logs} {
		os.RemoveAll(d)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	h.procs = &procs{logDir: logs, pidfile: filepath.Join(h.cfg.Out, "pids")}
	h.res.Versions = h.versions()
	h.res.Machine = machine()

	if h.phase("rows") {
		r, err := h.rows()
		h.procs.stopAll()
		if err != nil {
			return fmt.Errorf("rows: %w", err)
		}
		h.res.Rows = r
	}
	if h.phase("cold") {
		r, err := h.cold()
		h.procs.stopAll()
		if err != nil {
			return fmt.Errorf("cold path: %w", err)
		}
		h.res.Cold = r
	}
	if h.phase("herd") {
		r, err := h.herds()
		h.procs.stopAll()
		if err != nil {
			return fmt.Errorf("herd: %w", err)
		}
		h.res.Herd = r
	}
	if h.phase("big") {
		r, err := h.big()
		h.procs.stopAll()
		if err != nil {
			return fmt.Errorf("100k aliases: %w", err)
		}
		h.res.Big = r
	}
	// A blocks case that measured something but failed (not ready in time, wrong answers) is
	// reported, and the run ends with its error once the results are written.
	var failed error
	if h.phase("blocks") {
		r, err := h.blocks()
		h.procs.stopAll()
		if err != nil {
			return fmt.Errorf("%d server blocks: %w", h.cfg.Blocks, err)
		}
		h.res.Blocks = r
		if r.Error != "" {
			failed = fmt.Errorf("%d server blocks: %s (the results so far are in %s)", h.cfg.Blocks, r.Error, h.cfg.Results)
		}
	}
	// Likewise a transfer case whose change did not reach a server in time.
	if h.phase("transfer") {
		r, err := h.transfer(h.cfg.XfrChanges, h.cfg.XfrNames)
		h.procs.stopAll()
		if err != nil {
			return fmt.Errorf("zone transfers: %w", err)
		}
		h.res.Transfer = r
		if r.Error != "" && failed == nil {
			failed = fmt.Errorf("zone transfers: %s (the results so far are in %s)", r.Error, h.cfg.Results)
		}
	}
	// Likewise an agency case whose change did not reach every client apex in time.
	if h.phase("agency") {
		r, err := h.agency(h.cfg.AgencyChanges)
		h.procs.stopAll()
		if err != nil {
			return fmt.Errorf("agency changes: %w", err)
		}
		h.res.Agency = r
		for _, c := range []*agencyCase{r.External, r.Self} {
			if c.Error != "" && failed == nil {
				failed = fmt.Errorf("agency changes (%s): %s (the results so far are in %s)", c.Name, c.Error, h.cfg.Results)
			}
		}
	}
	if h.phase("gobench") {
		h.res.GoBenchCount = h.cfg.GoBenchCount
		r, err := h.gobench(h.cfg.GoBenchCount)
		if err != nil {
			return fmt.Errorf("go benchmarks: %w", err)
		}
		h.res.GoBench = r
	}
	h.res.Finished = time.Now().UTC()

	j, err := marshalResults(&h.res)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.cfg.Out, "results.json"), j, 0o644); err != nil {
		return err
	}
	md := render(&h.res)
	if err := os.WriteFile(h.cfg.Results, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	return failed
}

// sleep waits d or until the run is interrupted.
func (h *harness) sleep(d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-h.ctx.Done():
		return h.ctx.Err()
	}
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }

func writeRaw(path, content string) { os.WriteFile(path, []byte(content), 0o644) }

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func output(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return string(out)
}

// versions of everything that answers or loads.
func (h *harness) versions() []kv {
	var v []kv
	cd := strings.Fields(output(h.cfg.CoreDNS, "-version"))
	v = append(v, kv{"CoreDNS (cmd/coredns, with flatten)", strings.TrimSuffix(strings.Join(cd, " "), ",")})
	commit := strings.TrimSpace(output("git", "-C", h.cfg.RepoRoot, "rev-parse", "--short", "HEAD"))
	// The results file itself does not count: each run rewrites it.
	if strings.TrimSpace(output("git", "-C", h.cfg.RepoRoot, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/RESULTS.md")) != "" {
		commit += " (with uncommitted changes)"
	}
	v = append(v, kv{"flatten (this repository)", commit})
	for _, s := range strings.Split(output("dnsperf", "-h"), "\n") {
		if strings.HasPrefix(s, "Version") {
			v = append(v, kv{"dnsperf", strings.TrimSpace(strings.TrimPrefix(s, "Version"))})
		}
	}
	for _, p := range []struct{ name, bin, pkg string }{
		{"PowerDNS Authoritative", "pdns_server", "pdns-server"},
		{"PowerDNS bind backend", "", "pdns-backend-bind"},
		{"PowerDNS Recursor", "pdns_recursor", "pdns-recursor"},
		{"dnsperf package", "", "dnsperf"},
	} {
		deb := strings.TrimSpace(output("dpkg-query", "-W", "-f=${Version}", p.pkg))
		val := "Debian " + p.pkg + " " + deb
		if p.bin != "" {
			for _, l := range strings.Split(output(p.bin, "--version"), "\n") {
				if i := strings.Index(l, "PowerDNS"); i >= 0 {
					val = strings.TrimSpace(l[i:]) + "; " + val
					break
				}
			}
		}
		v = append(v, kv{p.name, val})
	}
	if h.phase("agency") {
		v = append(v, kv{"BIND 9 (the agency primary of the agency case)", firstLine(output(sbinPath("named"), "-v")) + "; Debian bind9 " + strings.TrimSpace(output("dpkg-query", "-W", "-f=${Version}", "bind9"))})
	}
	if h.phase("transfer") || h.phase("agency") {
		v = append(v, kv{"NSD (the secondary of the transfer and agency cases)", firstLine(output(nsdPath(), "-v")) + "; Debian nsd " + strings.TrimSpace(output("dpkg-query", "-W", "-f=${Version}", "nsd"))})
	}
	v = append(v, kv{"Go", runtime.Version()})
	return v
}

func machine() []kv {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem = firstLine(string(b))
		mem = strings.Join(strings.Fields(strings.TrimPrefix(mem, "MemTotal:")), " ")
	}
	hyper := ""
	for _, l := range strings.Split(output("lscpu"), "\n") {
		if v, ok := strings.CutPrefix(l, "Hypervisor vendor:"); ok {
			hyper = strings.TrimSpace(v)
		}
	}
	cores := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "processor") {
				cores++
			}
		}
	}
	m := []kv{
		{"CPU", model},
		{"cores", strconv.Itoa(cores)},
		{"kernel", strings.TrimSpace(string(kernel))},
		{"memory", mem},
	}
	if hyper != "" {
		m = append(m, kv{"hypervisor", hyper})
	}
	if virt := strings.TrimSpace(output("systemd-detect-virt", "--container")); virt != "" && virt != "none" {
		m = append(m, kv{"container", virt})
	}
	return m
}
