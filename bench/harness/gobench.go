package main

import (
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// goBench is one Go benchmark's medians over the -count runs.
type goBench struct {
	Name     string  `json:"name"`
	NsOp     float64 `json:"ns_op"`
	BOp      float64 `json:"b_op"`
	AllocsOp float64 `json:"allocs_op"`
}

func (r *results) goBench(name string) *goBench {
	for i := range r.GoBench {
		if r.GoBench[i].Name == name {
			return &r.GoBench[i]
		}
	}
	return nil
}

// gobench compiles the plugin's test binary (on both cores) and runs every benchmark in it once,
// with -count runs each, pinned to the server core with GOMAXPROCS=1, so that the hit paths
// compared in bench_test.go are measured in one run on the same core as the servers were.
func (h *harness) gobench(count int) ([]goBench, error) {
	bin, err := filepath.Abs(filepath.Join(h.cfg.Out, "flatten.test"))
	if err != nil {
		return nil, err
	}
	build := exec.CommandContext(h.ctx, "go", "test", "-c", "-o", bin, ".")
	build.Dir = h.cfg.RepoRoot
	if out, err := build.CombinedOutput(); err != nil {
		return nil, errorf("go test -c: %v: %s", err, out)
	}
	cmd := exec.CommandContext(h.ctx, "taskset", "-c", strconv.Itoa(h.cfg.ServerCPU), bin,
		"-test.run", "^$", "-test.bench", ".", "-test.benchmem", "-test.count", strconv.Itoa(count))
	cmd.Dir = h.cfg.RepoRoot
	cmd.Env = append(cmd.Environ(), "GOMAXPROCS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	writeRaw(filepath.Join(h.raw, "gobench.txt"), string(out))
	if err != nil {
		return nil, errorf("benchmarks: %v: %s", err, out)
	}
	return parseGoBench(string(out)), nil
}

// parseGoBench reads `go test -bench -benchmem` output and returns each benchmark's medians, in
// the order they first appear.
func parseGoBench(out string) []goBench {
	type vals struct{ ns, b, allocs []float64 }
	var order []string
	m := map[string]*vals{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i] // the GOMAXPROCS suffix
			}
		}
		v := m[name]
		if v == nil {
			v = &vals{}
			m[name] = v
			order = append(order, name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			x, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				v.ns = append(v.ns, x)
			case "B/op":
				v.b = append(v.b, x)
			case "allocs/op":
				v.allocs = append(v.allocs, x)
			}
		}
	}
	var res []goBench
	for _, n := range order {
		v := m[n]
		res = append(res, goBench{Name: n, NsOp: median(v.ns), BOp: median(v.b), AllocsOp: median(v.allocs)})
	}
	return res
}

func sortStrings(s []string) { sort.Strings(s) }
