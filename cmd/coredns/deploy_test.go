package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"
)

// testVersion is the version the tests stamp into the binary they build, as release/build.sh does.
const testVersion = "v0.0.0-deploytest"

// built is the binary of this command, built once for the tests that run it (buildCoreDNS).
var built struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildCoreDNS builds this command once, with the version stamped in as the release build does,
// and returns the binary's path. Under -race the binary is built with -race too, so that the
// packages this test binary was compiled from are reused and the build is a link. Skipped with
// -short.
func buildCoreDNS(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the coredns binary; skipped with -short")
	}
	built.once.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			built.err = fmt.Errorf("no go command to build with: %v", err)
			return
		}
		if built.dir, err = os.MkdirTemp("", "flatten-coredns-"); err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(built.dir, "coredns")
		args := []string{"build", "-o", built.bin, "-ldflags", "-X github.com/flattendns/flatten.Version=" + testVersion}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command(goTool, append(args, ".")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// TestVersionFlag: `coredns -version` says which flatten is in the binary, on a line of its own
// before CoreDNS's.
func TestVersionFlag(t *testing.T) {
	bin := buildCoreDNS(t)
	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil {
		t.Fatalf("coredns -version: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 || lines[0] != "flatten-"+testVersion || !strings.HasPrefix(lines[1], "CoreDNS-") {
		t.Errorf("coredns -version printed %q, want \"flatten-%s\" and then CoreDNS's version", out, testVersion)
	}
}

// TestDeployCorefiles: the Corefile and zone files of deploy/helm/values.yaml (rendered as the
// coredns Helm chart renders them) and of deploy/kubernetes/flatten.yaml (the ConfigMap) start
// with the built binary, on loopback, and serve what they promise: the zone, and its apex
// flattened through the upstream (a fake one here), ready, and the metrics.
func TestDeployCorefiles(t *testing.T) {
	bin := buildCoreDNS(t)
	for name, load := range map[string]func(t *testing.T) (string, map[string]string){
		"helm":       helmConfig,
		"kubernetes": kubernetesConfig,
	} {
		t.Run(name, func(t *testing.T) {
			corefile, files := load(t)
			runDeployed(t, bin, corefile, files)
		})
	}
}

// chartValues is the part of the coredns Helm chart's values that makes the ConfigMap.
type chartValues struct {
	ExtraConfig map[string]struct {
		Parameters string `yaml:"parameters"`
	} `yaml:"extraConfig"`
	Servers []struct {
		Zones []struct {
			Zone   string `yaml:"zone"`
			Scheme string `yaml:"scheme"`
		} `yaml:"zones"`
		Port    int `yaml:"port"`
		Plugins []struct {
			Name        string `yaml:"name"`
			Parameters  string `yaml:"parameters"`
			ConfigBlock string `yaml:"configBlock"`
		} `yaml:"plugins"`
	} `yaml:"servers"`
	ZoneFiles []struct {
		Filename string `yaml:"filename"`
		Contents string `yaml:"contents"`
	} `yaml:"zoneFiles"`
	IsClusterService bool `yaml:"isClusterService"`
	SecurityContext  struct {
		RunAsUser int `yaml:"runAsUser"`
	} `yaml:"securityContext"`
}

// helmConfig renders the Corefile of deploy/helm/values.yaml as the chart's
// templates/configmap.yaml does, and returns it with the zone files (mounted beside it in
// /etc/coredns).
func helmConfig(t *testing.T) (string, map[string]string) {
	var v chartValues
	readYAML(t, filepath.Join("..", "..", "deploy", "helm", "values.yaml"), func(d *yaml.Decoder) error { return d.Decode(&v) })
	if v.IsClusterService {
		t.Errorf("values.yaml: isClusterService is true; flatten's server is authoritative, not the cluster DNS")
	}
	if v.SecurityContext.RunAsUser != 65532 {
		t.Errorf("values.yaml: securityContext.runAsUser is %d, want the image's 65532", v.SecurityContext.RunAsUser)
	}
	var b strings.Builder
	for name, c := range v.ExtraConfig {
		fmt.Fprintf(&b, "%s %s\n", name, c.Parameters)
	}
	for _, s := range v.Servers {
		var zones []string
		for _, z := range s.Zones {
			zone := z.Zone
			if zone == "" {
				zone = "."
			}
			zones = append(zones, z.Scheme+zone)
		}
		if len(zones) == 0 {
			zones = []string{"."}
		}
		b.WriteString(strings.Join(zones, " "))
		if s.Port != 0 {
			fmt.Fprintf(&b, ":%d ", s.Port)
		}
		b.WriteString("{\n")
		for _, p := range s.Plugins {
			b.WriteString("    " + p.Name)
			if p.Parameters != "" {
				b.WriteString(" " + p.Parameters)
			}
			if p.ConfigBlock != "" {
				b.WriteString(" {\n")
				for _, l := range strings.Split(p.ConfigBlock, "\n") {
					b.WriteString("        " + l + "\n")
				}
				b.WriteString("    }")
			}
			b.WriteString("\n")
		}
		b.WriteString("}\n")
	}
	files := map[string]string{}
	for _, z := range v.ZoneFiles {
		files[z.Filename] = z.Contents
	}
	return b.String(), files
}

// kubernetesConfig returns the Corefile and the other files of the ConfigMap in
// deploy/kubernetes/flatten.yaml, after checking that its Deployment mounts that ConfigMap at
// /etc/coredns and starts CoreDNS with /etc/coredns/Corefile.
func kubernetesConfig(t *testing.T) (string, map[string]string) {
	type object struct {
		Kind     string `yaml:"kind"`
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Data map[string]string `yaml:"data"`
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Args            []string `yaml:"args"`
						SecurityContext struct {
							RunAsUser    int  `yaml:"runAsUser"`
							RunAsNonRoot bool `yaml:"runAsNonRoot"`
						} `yaml:"securityContext"`
						VolumeMounts []struct {
							Name      string `yaml:"name"`
							MountPath string `yaml:"mountPath"`
						} `yaml:"volumeMounts"`
					} `yaml:"containers"`
					Volumes []struct {
						Name      string `yaml:"name"`
						ConfigMap struct {
							Name string `yaml:"name"`
						} `yaml:"configMap"`
					} `yaml:"volumes"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	var objs []object
	readYAML(t, filepath.Join("..", "..", "deploy", "kubernetes", "flatten.yaml"), func(d *yaml.Decoder) error {
		for {
			var o object
			if err := d.Decode(&o); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			objs = append(objs, o)
		}
	})
	configMaps := map[string]map[string]string{}
	var deployments []object
	for _, o := range objs {
		switch o.Kind {
		case "ConfigMap":
			configMaps[o.Metadata.Name] = o.Data
		case "Deployment":
			deployments = append(deployments, o)
		}
	}
	if len(deployments) != 1 || len(deployments[0].Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("flatten.yaml: want one Deployment with one container, got %d Deployments", len(deployments))
	}
	pod := deployments[0].Spec.Template.Spec
	c := pod.Containers[0]
	if !slices.Equal(c.Args, []string{"-conf", "/etc/coredns/Corefile"}) {
		t.Errorf("flatten.yaml: the container's args are %q, want -conf /etc/coredns/Corefile", c.Args)
	}
	if !c.SecurityContext.RunAsNonRoot || c.SecurityContext.RunAsUser != 65532 {
		t.Errorf("flatten.yaml: the container's securityContext has runAsNonRoot %v and runAsUser %d, want true and the image's 65532",
			c.SecurityContext.RunAsNonRoot, c.SecurityContext.RunAsUser)
	}
	var data map[string]string
	for _, m := range c.VolumeMounts {
		if m.MountPath != "/etc/coredns" {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name {
				data = configMaps[v.ConfigMap.Name]
			}
		}
	}
	if data == nil {
		t.Fatal("flatten.yaml: the Deployment mounts no ConfigMap of the file at /etc/coredns")
	}
	corefile, ok := data["Corefile"]
	if !ok {
		t.Fatal("flatten.yaml: the ConfigMap mounted at /etc/coredns has no Corefile")
	}
	files := map[string]string{}
	for k, v := range data {
		if k != "Corefile" {
			files[k] = v
		}
	}
	return corefile, files
}

func readYAML(t *testing.T, path string, decode func(*yaml.Decoder) error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := yaml.NewDecoder(f)
	d.KnownFields(false)
	if err := decode(d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// The deployed server's apex target, and the address the fake upstream gives it.
const (
	deployTarget = "myapp.cdn.example.net."
	deployAddr   = "192.0.2.80"
)

// runDeployed starts bin with corefile, made to run here: files (the ConfigMap's) written to a
// temporary directory that stands for /etc/coredns, every listener on 127.0.0.1 and a free port
// (the DNS servers, health, ready, prometheus), and the upstream a fake one on loopback. Then it
// checks the zone is served, its apex flattened, ready says 200 and the metrics have flatten's.
func runDeployed(t *testing.T, bin, corefile string, files map[string]string) {
	dir := t.TempDir()
	for name, contents := range files {
		if strings.ContainsAny(name, `/\`) {
			t.Fatalf("file name %q in the config", name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(contents), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	upstream := fakeUpstream(t)
	dnsPort, readyPort, metricsPort := freePort(t), freePort(t), freePort(t)
	cf := localCorefile(t, corefile, dir, dnsPort, readyPort, metricsPort, freePort(t), upstream)
	path := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
		t.Fatal(err)
	}

	out := &syncBuffer{}
	cmd := exec.Command(bin, "-conf", path)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when the process has exited, with waitErr set
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// Killed: a SIGTERM would wait out health's lameduck.
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("Corefile:\n%s\ncoredns output:\n%s", cf, out.String())
		}
	})

	addr := net.JoinHostPort("127.0.0.1", dnsPort)
	var soa *dns.Msg
	for deadline := time.Now().Add(20 * time.Second); soa == nil && time.Now().Before(deadline); {
		select {
		case <-exited:
			t.Fatalf("coredns exited: %v", waitErr)
		default:
		}
		soa, _ = ask(addr, "example.com.", dns.TypeSOA)
		if soa == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if soa == nil || soa.Rcode != dns.RcodeSuccess || len(soa.Answer) != 1 || soa.Answer[0].Header().Rrtype != dns.TypeSOA {
		t.Fatalf("example.com SOA: want the zone's SOA, got:\n%v", soa)
	}
	if mx, err := ask(addr, "example.com.", dns.TypeMX); err != nil || len(mx.Answer) != 1 || mx.Answer[0].Header().Rrtype != dns.TypeMX {
		t.Errorf("example.com MX: want the zone's MX, got %v:\n%v", err, mx)
	}
	a, err := ask(addr, "example.com.", dns.TypeA)
	if err != nil || a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 {
		t.Fatalf("example.com A: want %s flattened from %s, got %v:\n%v", deployAddr, deployTarget, err, a)
	}
	if rr, ok := a.Answer[0].(*dns.A); !ok || rr.A.String() != deployAddr || rr.Hdr.Name != "example.com." {
		t.Errorf("example.com A: want example.com. A %s, got %v", deployAddr, a.Answer[0])
	}

	client := &http.Client{Timeout: 5 * time.Second}
	var ready int
	for deadline := time.Now().Add(10 * time.Second); ready != http.StatusOK && time.Now().Before(deadline); {
		if r, err := client.Get("http://" + net.JoinHostPort("127.0.0.1", readyPort) + "/ready"); err == nil {
			ready = r.StatusCode
			r.Body.Close()
		}
		if ready != http.StatusOK {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if ready != http.StatusOK {
		t.Errorf("/ready: status %d, want 200", ready)
	}
	r, err := client.Get("http://" + net.JoinHostPort("127.0.0.1", metricsPort) + "/metrics")
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if !bytes.Contains(body, []byte("coredns_flatten_requests_total{")) {
		t.Errorf("/metrics has no coredns_flatten_requests_total:\n%.2000s", body)
	}
	if !strings.Contains(out.String(), "flatten "+testVersion+": ") {
		t.Errorf("the startup log has no line naming flatten %s:\n%s", testVersion, out.String())
	}
}

var (
	serverPort = regexp.MustCompile(`:53(\s*\{)$`)
	etcCoredns = regexp.MustCompile(`/etc/coredns/`)
)

// localCorefile makes corefile run in this test: server blocks on 127.0.0.1 and dnsPort (the
// deployed port 53), health, ready and prometheus on loopback, files under dir instead of
// /etc/coredns, and the upstream the fake one. It fails the test if anything that would listen
// or send beyond loopback is left.
func localCorefile(t *testing.T, corefile, dir, dnsPort, readyPort, metricsPort, healthPort, upstream string) string {
	t.Helper()
	var out []string
	depth, servers := 0, 0
	for _, line := range strings.Split(corefile, "\n") {
		trim := strings.TrimSpace(line)
		fields := strings.Fields(trim)
		switch {
		case strings.HasPrefix(trim, "#") || len(fields) == 0:
		case depth == 0 && strings.HasSuffix(trim, "{"):
			if !serverPort.MatchString(trim) {
				t.Fatalf("server block %q: want it on port 53", trim)
			}
			line = serverPort.ReplaceAllString(trim, ":"+dnsPort+"$1") + "\n    bind 127.0.0.1"
			servers++
		case depth == 1 && fields[0] == "health":
			line = strings.Replace(line, "health", "health 127.0.0.1:"+healthPort, 1)
		case depth == 1 && fields[0] == "ready":
			line = strings.Replace(line, "ready", "ready 127.0.0.1:"+readyPort, 1)
		case depth == 1 && fields[0] == "prometheus":
			line = "    prometheus 127.0.0.1:" + metricsPort
		case depth == 2 && fields[0] == "upstream":
			line = "        upstream " + upstream
		}
		line = etcCoredns.ReplaceAllString(line, dir+"/")
		depth += strings.Count(trim, "{") - strings.Count(trim, "}")
		out = append(out, line)
	}
	cf := strings.Join(out, "\n")
	if servers == 0 {
		t.Fatalf("no server block in the Corefile:\n%s", corefile)
	}
	for _, bad := range []string{"0.0.0.0", "/etc/", "resolv.conf"} {
		if strings.Contains(cf, bad) {
			t.Fatalf("the Corefile still has %q after it was made to run on loopback:\n%s", bad, cf)
		}
	}
	return cf
}

// fakeUpstream answers deployTarget's A question with deployAddr, on 127.0.0.1 (UDP), like a
// recursive resolver; NODATA for its other types and NXDOMAIN for other names. It is stopped when
// the test ends.
func fakeUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		switch {
		case !strings.EqualFold(q.Name, deployTarget):
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR(deployTarget + " 300 IN A " + deployAddr)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	go s.ActivateAndServe()
	<-started
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.ShutdownContext(ctx)
	})
	return pc.LocalAddr().String()
}

// syncBuffer is the output of a running process, read while it writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ask sends one question over UDP to addr.
func ask(addr, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	return r, err
}
