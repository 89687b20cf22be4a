package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one server the harness started, pinned to a core.
type proc struct {
	name    string
	pid     int
	cmd     *exec.Cmd
	log     string
	started time.Time
	done    chan struct{} // closed when the process has exited
}

// procs owns every long-running process of a run. Each PID is also written to pidfile with the
// process's start time, so that bench/run.sh can stop what is left (and only that) if the
// harness itself is killed.
type procs struct {
	mu      sync.Mutex
	list    []*proc
	logDir  string
	pidfile string
}

// start runs bin pinned to cpu (taskset execs it, so the PID is the server's own) with extra
// environment, its output going to logDir/name.log.
func (ps *procs) start(name string, cpu int, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(ps.logDir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("taskset", append([]string{"-c", strconv.Itoa(cpu), bin}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the harness dies without cleaning up, the kernel sends the child SIGTERM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, pid: cmd.Process.Pid, cmd: cmd, log: logPath, started: started, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()

	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	if st, err := startTime(p.pid); err == nil {
		if f, err := os.OpenFile(ps.pidfile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintf(f, "%d %d %s\n", p.pid, st, name)
			f.Close()
		}
	}
	return p, nil
}

// alive reports whether p is still running.
func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, waits up to 5 s, then SIGKILL.
func (ps *procs) stop(p *proc) {
	if p == nil {
		return
	}
	if p.alive() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for i, q := range ps.list {
		if q == p {
			ps.list = append(ps.list[:i], ps.list[i+1:]...)
			break
		}
	}
}

// stopAll stops every process still running, the last started first.
func (ps *procs) stopAll() {
	for {
		ps.mu.Lock()
		if len(ps.list) == 0 {
			ps.mu.Unlock()
			return
		}
		p := ps.list[len(ps.list)-1]
		ps.mu.Unlock()
		ps.stop(p)
	}
}

// startTime is the process's start time in clock ticks since boot (/proc/PID/stat field 22),
// which tells a PID apart from a later process that reuses it.
func startTime(pid int) (uint64, error) {
	f, err := procStatFields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// procStatFields are the fields of /proc/PID/stat after the command name (field 3 first).
func procStatFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, errors.New("bad stat line")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return nil, errors.New("short stat line")
	}
	return f, nil
}

// cpuTicks is the user+system CPU time the process has used, in clock ticks.
func cpuTicks(pid int) uint64 {
	f, err := procStatFields(pid)
	if err != nil {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	return u + s
}

// procStatus reads a "Key: value kB" line of /proc/PID/status, in kB.
func procStatus(pid int, key string) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return 0
}

// coreTicks is one CPU's line of /proc/stat: busy and total ticks. Busy is user, nice and system
// time, the time that processes' own CPU accounting (/proc/PID/stat) can be set against;
// interrupt and softirq time (on loopback, the delivery of packets sent from that core) is left
// out of busy, so it never counts as someone else's load.
func coreTicks(cpu int) (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	prefix := "cpu" + strconv.Itoa(cpu) + " "
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		for i, f := range strings.Fields(l)[1:] {
			n, _ := strconv.ParseUint(f, 10, 64)
			total += n
			if i <= 2 { // user, nice, system
				busy += n
			}
		}
	}
	return busy, total
}

// run runs a short command (dnsperf, herd) pinned to cpu and returns its standard output; it is
// killed when ctx ends (an interrupt).
func run(ctx context.Context, cpu int, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "taskset", append([]string{"-c", strconv.Itoa(cpu), bin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
