package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/upstreamd/upstreamd/admin"
	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/containers"
	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/orchestrator"
	"github.com/upstreamd/upstreamd/render"
	"github.com/upstreamd/upstreamd/spec"
	"github.com/upstreamd/upstreamd/store"
)

// connectEtcd opens the etcd client of a one-shot command and checks that
// etcd answers.
func connectEtcd(ctx context.Context, scfg store.Config, log zerolog.Logger) (*store.Client, error) {
	scfg.Logger = log
	etcd, err := store.New(scfg)
	if err != nil {
		return nil, err
	}
	if err := etcd.Ping(ctx); err != nil {
		etcd.Close()
		return nil, err
	}
	return etcd, nil
}

// readRegistrations reads the registrations once, validated as the
// daemon's watch would: invalid entries are logged and left out.
func readRegistrations(ctx context.Context, cfg *spec.Spec, files spec.Files, log zerolog.Logger) (store.Snapshot, error) {
	etcd, err := connectEtcd(ctx, cfg.StoreConfig(files), log)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer etcd.Close()
	return etcd.ReadSnapshot(ctx, cfg.Project.Etcd.Prefix, log)
}

func newRenderCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var check bool
	cmd := g.specCommand(stderr, &cobra.Command{
		Use:   "render",
		Short: "print the config that would be rendered from the registrations in etcd now; touches nothing",
		Long: "render prints the config the daemon would deliver now: the template rendered from\n" +
			"the registrations in etcd, with upstreamd's status server appended. With --check\n" +
			"it also runs `nginx -t` on it in a throwaway container of proxy.image (no network,\n" +
			"removed afterwards) and exits 1 with nginx's message when nginx rejects it.",
		Args: usageArgs(cobra.NoArgs),
	}, func(cmd *cobra.Command, _ []string, log zerolog.Logger, cfg *spec.Spec, files spec.Files) error {
		tmpl, err := cfg.LoadTemplate()
		if err != nil {
			return err
		}
		snap, err := readRegistrations(cmd.Context(), cfg, files, log)
		if err != nil {
			return err
		}
		view := cfg.View(files, snap)
		out, err := cfg.RenderFor(tmpl, files, snap)
		if err != nil {
			return err
		}
		if _, err := stdout.Write(out); err != nil {
			return err
		}
		if _, err := io.WriteString(stdout, renderNotes(cfg, view)); err != nil {
			return err
		}
		if !check {
			return nil
		}
		s, remove, err := throwaway(cmd.Context(), cfg, log)
		if err != nil {
			return err
		}
		defer remove()
		if err := s.WriteFiles(cmd.Context(), view.Files()); err != nil {
			return err
		}
		if err := s.Check(cmd.Context(), out); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stderr, "nginx -t: the rendered config is valid (checked in a throwaway container of %s)\n", cfg.Project.Proxy.Image)
		return err
	})
	cmd.Flags().BoolVar(&check, "check", false, "also check the output with `nginx -t` in a throwaway container of proxy.image")
	return cmd
}

// renderNotes are the comments render adds below the config: where the
// built-in template sends each request, and the pools pushed to the
// dynamic balancer, which are not in the file.
func renderNotes(cfg *spec.Spec, view render.View) string {
	var b strings.Builder
	if cfg.Project.Proxy.Template == "" {
		b.WriteString("\n# Routes:\n")
		for _, line := range render.RouteText(view) {
			b.WriteString("#   " + line + "\n")
		}
	}
	if *cfg.Project.Proxy.Dynamic {
		b.WriteString("\n# Dynamic pools (pushed to nginx's Lua balancer, not part of the file):\n")
		for _, s := range view.Services {
			addrs := make([]string, 0, len(s.Backends))
			for _, be := range s.Backends {
				addrs = append(addrs, be.Addr)
			}
			fmt.Fprintf(&b, "#   %s: %s\n", s.Name, strings.Join(addrs, " "))
		}
	}
	return b.String()
}

func newStatusCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var asJSON bool
	var adminAddr string
	cmd := g.specCommand(stderr, &cobra.Command{
		Use:   "status",
		Short: "the project's containers, replica counts and registrations; what can be read when etcd or Docker cannot",
		Long: "status reads Docker and etcd itself and prints tables; it works while the daemon is down.\n" +
			"With --json it prints the running daemon's own view instead (GET /api/v1/status of its\n" +
			"admin listener, admin.listen): backends with their health, last probe and registration,\n" +
			"the proxy's config, the nodes and the leader.",
		Args: usageArgs(cobra.NoArgs),
	}, func(cmd *cobra.Command, _ []string, log zerolog.Logger, cfg *spec.Spec, files spec.Files) error {
		if asJSON {
			c, err := adminClient(cfg, files, adminAddr)
			if err != nil {
				return err
			}
			data, err := c.StatusJSON(cmd.Context())
			if err != nil {
				return err
			}
			_, err = stdout.Write(data)
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		view, etcdErr := readEtcd(cmd.Context(), cfg, files, log)
		list, dockerErr := listContainers(cmd.Context(), cfg, log)
		writeContainers(tw, cfg, list, view.snap, dockerErr)
		fmt.Fprintln(tw)
		writeReplicas(tw, cfg, view, etcdErr)
		fmt.Fprintln(tw)
		writeNodes(tw, cfg, view, etcdErr)
		fmt.Fprintln(tw)
		writeKeys(tw, cfg, view.snap, etcdErr)
		return errors.Join(tw.Flush(), dockerErr, etcdErr)
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the running daemon's status as JSON (from its admin listener)")
	cmd.Flags().StringVar(&adminAddr, "admin", "", "the daemon's admin listener, host:port (default: admin.listen of the spec)")
	return cmd
}

// writeContainers writes status's table of the project's containers and
// their registrations.
func writeContainers(tw *tabwriter.Writer, cfg *spec.Spec, list []containers.Container, snap store.Snapshot, dockerErr error) {
	byContainer := map[string]store.Entry{}
	for _, e := range snap.Entries {
		byContainer[e.Reg.Container] = e
	}
	fmt.Fprintln(tw, "ROLE\tSERVICE\tCONTAINER\tID\tSTATE\tADDRESS\tREGISTERED")
	for _, c := range list {
		addr, reg := c.IPs[cfg.Project.Network.Name], "-"
		if hp := c.Published[portOf(c)]; cfg.Project.Network.Advertise == orchestrator.AdvertiseHost && c.Role == containers.RoleBackend && hp > 0 {
			addr = net.JoinHostPort(cfg.Node.Network.NodeAddress, strconv.Itoa(hp))
		}
		if e, ok := byContainer[c.Short()]; ok {
			reg = e.Key
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Role, dash(c.Service), c.Name, c.Short(), c.State, dash(addr), reg)
	}
	if dockerErr != nil {
		fmt.Fprintf(tw, "(docker: %v)\n", dockerErr)
	}
}

// writeReplicas writes status's table of the services' replicas: the
// spec's or the override's, and how many are placed.
func writeReplicas(tw *tabwriter.Writer, cfg *spec.Spec, view etcdView, etcdErr error) {
	fmt.Fprintln(tw, "SERVICE\tREPLICAS\tPLACED\tFROM")
	for _, svc := range cfg.Project.Service {
		n, from := *svc.Replicas, "spec"
		if ov, ok := view.Overrides[svc.Name]; ok {
			n, from = ov, fmt.Sprintf("override in etcd (spec: %d; `upstreamd scale %s --reset` removes it)", *svc.Replicas, svc.Name)
		}
		placed := fmt.Sprint(view.Placed[svc.Name])
		if etcdErr == nil && view.Placed[svc.Name] < n {
			placed += fmt.Sprintf(" (%d not placed: max_per_node %d × %d live node(s))", n-view.Placed[svc.Name], *svc.MaxPerNode, len(view.Nodes))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", svc.Name, n, placed, from)
	}
}

// writeNodes writes where status finds the proxy, and the table of the
// live nodes and the slots they hold.
func writeNodes(tw *tabwriter.Writer, cfg *spec.Spec, view etcdView, etcdErr error) {
	switch {
	case cfg.Project.Proxy.Placement == orchestrator.PlacementEvery:
		fmt.Fprintln(tw, "PROXY: on every node (placement \"every\")")
	case view.Leader != nil:
		fmt.Fprintf(tw, "PROXY: on the leader, node %s, at %s\n", view.Leader.Node, view.Leader.Address)
	case etcdErr == nil:
		fmt.Fprintln(tw, "PROXY: no leader elected (no live node?)")
	}
	fmt.Fprintln(tw, "NODE\tHOST\tADDRESS\tVERSION\tSTARTED\tSLOTS")
	for _, a := range view.Nodes {
		var held []string
		for _, svc := range cfg.Project.Service {
			if k := view.Slots[a.Node][svc.Name]; k > 0 {
				held = append(held, fmt.Sprintf("%s:%d", svc.Name, k))
			}
		}
		started := "-"
		if !a.Started.IsZero() {
			started = a.Started.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Node, dash(a.Host), dash(a.Address), dash(a.Version), started, dash(strings.Join(held, " ")))
	}
}

// writeKeys writes status's table of the project's registrations in etcd.
func writeKeys(tw *tabwriter.Writer, cfg *spec.Spec, snap store.Snapshot, etcdErr error) {
	fmt.Fprintln(tw, "KEY\tPROJECT\tNODE\tCONTAINER\tLEASE")
	others := 0
	for _, e := range snap.Entries {
		if !store.InProjects(e.Reg.Project, cfg.Projects()) {
			others++
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%x\n", e.Key, dash(e.Reg.Project), dash(e.Reg.Node), dash(e.Reg.Container), e.Lease)
	}
	if others > 0 {
		fmt.Fprintf(tw, "(%d keys of other projects under %s not shown: they are not in this project's pools)\n", others, cfg.Project.Etcd.Prefix)
	}
	if etcdErr != nil {
		fmt.Fprintf(tw, "(etcd: %v)\n", etcdErr)
	}
}

// adminClient returns a client of the daemon's admin listener: addr, else
// the spec's admin.listen, with the spec's token.
func adminClient(cfg *spec.Spec, files spec.Files, addr string) (*admin.Client, error) {
	if addr == "" {
		addr = cfg.Node.Admin.Listen
	}
	if addr == "" {
		return nil, usageError{fmt.Errorf("the admin listener is off in %s (admin.listen = \"\"): set it, or give --admin host:port", cfg.File())}
	}
	return admin.NewClient(addr, files.AdminToken)
}

func newEventsCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var asJSON, noFollow bool
	var last int
	var adminAddr string
	cmd := g.specCommand(stderr, &cobra.Command{
		Use:   "events",
		Short: "stream the running daemon's events: containers dying, health changes, registrations, drains, reloads",
		Long: "events prints the last events the running daemon kept, then each new one as it happens,\n" +
			"until interrupted (from GET /api/v1/events of its admin listener, admin.listen); when the\n" +
			"daemon restarts it connects again and goes on with the new run's events. With --json,\n" +
			"one JSON object per line.",
		Args: usageArgs(cobra.NoArgs),
	}, func(cmd *cobra.Command, _ []string, _ zerolog.Logger, cfg *spec.Spec, files spec.Files) error {
		c, err := adminClient(cfg, files, adminAddr)
		if err != nil {
			return err
		}
		kept, err := c.Events(cmd.Context(), "")
		if err != nil {
			return err
		}
		since := kept.Run + "-0"
		evs := kept.Events
		if n := len(evs); n > 0 {
			since = evs[n-1].Cursor()
		}
		if last > 0 && len(evs) > last {
			evs = evs[len(evs)-last:]
		}
		enc := json.NewEncoder(stdout)
		show := func(e events.Event) {
			if asJSON {
				_ = enc.Encode(e)
				return
			}
			_, _ = fmt.Fprintln(stdout, e.String())
		}
		for _, e := range evs {
			show(e)
		}
		if noFollow {
			return nil
		}
		return c.Follow(cmd.Context(), since, show, func(note string) {
			_, _ = fmt.Fprintf(stderr, "(%s)\n", note)
		})
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per event and line")
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "print the kept events and exit")
	cmd.Flags().IntVarP(&last, "last", "n", 20, "how many of the kept events to print first (0: all)")
	cmd.Flags().StringVar(&adminAddr, "admin", "", "the daemon's admin listener, host:port (default: admin.listen of the spec)")
	return cmd
}

// listContainers lists the project's containers, by role then name.
func listContainers(ctx context.Context, cfg *spec.Spec, log zerolog.Logger) ([]containers.Container, error) {
	dcfg := cfg.DockerConfig()
	dcfg.Logger = log
	docker, err := containers.New(dcfg)
	if err != nil {
		return nil, err
	}
	defer docker.Close()
	list, err := docker.List(ctx, cfg.Project.Name)
	sort.Slice(list, func(i, j int) bool {
		if list[i].Role != list[j].Role {
			return list[i].Role < list[j].Role
		}
		return list[i].Name < list[j].Name
	})
	return list, err
}

// etcdView is what status reads from etcd: the registrations and the
// cluster.
type etcdView struct {
	snap store.Snapshot
	cluster.State
}

// readEtcd reads the registrations and the cluster once.
func readEtcd(ctx context.Context, cfg *spec.Spec, files spec.Files, log zerolog.Logger) (etcdView, error) {
	etcd, err := connectEtcd(ctx, cfg.StoreConfig(files), log)
	if err != nil {
		return etcdView{}, err
	}
	defer etcd.Close()
	snap, err := etcd.ReadSnapshot(ctx, cfg.Project.Etcd.Prefix, log)
	if err != nil {
		return etcdView{}, err
	}
	st, err := cluster.ReadState(ctx, etcd, cfg.Project.Name)
	return etcdView{snap: snap, State: st}, err
}

// portOf is a backend's container port, from its label.
func portOf(c containers.Container) int {
	p, _ := strconv.Atoi(c.Labels[containers.LabelPort])
	return p
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newScaleCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var reset bool
	cmd := g.specCommand(stderr, &cobra.Command{
		Use:   "scale SERVICE (REPLICAS | --reset)",
		Short: "set a service's replicas at run time (an override in etcd the daemon applies at once)",
		Long: "scale writes /upstreamd/<project>/replicas/<service> in etcd; the running daemon\n" +
			"watches it and reconciles immediately. --reset removes the override, so the\n" +
			"spec file's replicas apply again.",
		Args: usageArgs(cobra.RangeArgs(1, 2)),
	}, func(cmd *cobra.Command, args []string, log zerolog.Logger, cfg *spec.Spec, files spec.Files) error {
		svc := args[0]
		known := false
		for _, s := range cfg.Project.Service {
			known = known || s.Name == svc
		}
		if !known {
			return usageError{fmt.Errorf("service %q is not in %s (services: %v)", svc, cfg.File(), cfg.ServiceNames())}
		}
		if reset == (len(args) == 2) {
			return usageError{fmt.Errorf("give either REPLICAS or --reset")}
		}
		var n int
		if !reset { // validate before connecting: a typo must not wait on etcd
			var err error
			if n, err = cluster.ParseReplicas(args[1]); err != nil {
				return usageError{err}
			}
		}
		etcd, err := connectEtcd(cmd.Context(), cfg.StoreConfig(files), log)
		if err != nil {
			return err
		}
		defer etcd.Close()
		key := store.OverrideKey(cfg.Project.Name, svc)
		if reset {
			if _, err := etcd.Delete(cmd.Context(), key); err != nil {
				return err
			}
			_, err = fmt.Fprintf(stdout, "%s: override removed; replicas from %s apply\n", svc, cfg.File())
			return err
		}
		if _, err := etcd.Put(cmd.Context(), key, strconv.Itoa(n), 0); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s: replicas set to %d\n", svc, n)
		return err
	})
	cmd.Flags().BoolVar(&reset, "reset", false, "remove the override")
	return cmd
}
