package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/upstreamd/upstreamd/certs"
	"github.com/upstreamd/upstreamd/spec"
	"github.com/upstreamd/upstreamd/store"
)

// newCertsCmd is `upstreamd certs`: the certificates kept in etcd.
func newCertsCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "certs",
		Short: "list, import, renew or remove the certificates kept in etcd",
		Long: "The proxy serves, besides [[tls.certificate]] files, the certificates kept in\n" +
			"etcd under /upstreamd/<project>/certs/hosts/: those [acme] orders and those\n" +
			"imported here. Every node serves them; a change reaches nginx at once (checked\n" +
			"with nginx -t like every config).",
		Args: usageArgs(cobra.NoArgs),
	}
	root.AddCommand(newCertsListCmd(g, stdout, stderr), newCertsImportCmd(g, stdout, stderr),
		newCertsRenewCmd(g, stdout, stderr), newCertsRemoveCmd(g, stdout, stderr))
	return root
}

// certName is what a certificate may be named in etcd.
var certName = regexp.MustCompile(`^[A-Za-z0-9*][A-Za-z0-9._*-]{0,252}$`)

// readCerts reads and checks the certificates in etcd; what cannot be
// served is returned apart, with why.
func readCerts(ctx context.Context, cfg *spec.Spec, files spec.Files, log zerolog.Logger) (good []certs.Cert, bad map[string]error, err error) {
	etcd, err := connectEtcd(ctx, cfg.StoreConfig(files), log)
	if err != nil {
		return nil, nil, err
	}
	defer etcd.Close()
	kvs, _, err := etcd.List(ctx, store.CertHostsPrefix(cfg.Project.Name))
	if err != nil {
		return nil, nil, err
	}
	bad = map[string]error{}
	for _, kv := range kvs {
		c, err := certs.Parse(kv.Key, kv.Value, time.Now())
		if err != nil {
			bad[kv.Key] = err
			continue
		}
		good = append(good, c)
	}
	return good, bad, nil
}

func newCertsListCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	return g.specCommand(stderr, &cobra.Command{
		Use:   "list",
		Short: "list the certificates in etcd: names, source, expiry, renewal",
		Args:  usageArgs(cobra.NoArgs),
	}, func(cmd *cobra.Command, _ []string, log zerolog.Logger, cfg *spec.Spec, files spec.Files) error {
		good, bad, err := readCerts(cmd.Context(), cfg, files, log)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tSOURCE\tNAMES\tNOT AFTER\tRENEW AT\tSTORED BY")
		for _, c := range good {
			renew := "-"
			if !c.RenewAt.IsZero() {
				renew = c.RenewAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Source, strings.Join(c.Names(), ","),
				c.Leaf.NotAfter.UTC().Format(time.RFC3339), renew, dash(c.Node))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if len(good) == 0 && len(bad) == 0 {
			_, err := fmt.Fprintf(stdout, "no certificate in etcd under %s\n", store.CertHostsPrefix(cfg.Project.Name))
			return err
		}
		for _, key := range slices.Sorted(maps.Keys(bad)) {
			if _, err := fmt.Fprintf(stdout, "%s: not served: %v\n", key, bad[key]); err != nil {
				return err
			}
		}
		return nil
	})
}

func newCertsImportCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	var certFile, keyFile string
	cmd := g.specCommand(stderr, &cobra.Command{
		Use:   "import NAME --cert FILE --key FILE",
		Short: "keep a certificate and its key in etcd, served by every node (replaces NAME)",
		Long: "import checks the certificate (PEM, then its chain) and key (PEM) as a\n" +
			"[[tls.certificate]] is checked, and writes them to\n" +
			"/upstreamd/<project>/certs/hosts/NAME. NAME is yours to choose (the host name\n" +
			"is a good one); an ACME certificate of that name is replaced, and ACME does not\n" +
			"order for hosts an imported certificate covers.",
		Args: usageArgs(cobra.ExactArgs(1)),
	}, func(cmd *cobra.Command, args []string, log zerolog.Logger, cfg *spec.Spec, files spec.Files) error {
		name := args[0]
		if !certName.MatchString(name) {
			return usageError{fmt.Errorf("NAME %q: use letters, digits, '.', '-', '_' and '*' (a host name is a good one)", name)}
		}
		if certFile == "" || keyFile == "" {
			return usageError{fmt.Errorf("--cert and --key are both required")}
		}
		certPEM, err := os.ReadFile(certFile)
		if err != nil {
			return usageError{err}
		}
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return usageError{err}
		}
		leaf, err := certs.Check(certPEM, keyPEM, time.Now())
		if err != nil {
			return usageError{fmt.Errorf("%s and %s: %w", certFile, keyFile, err)}
		}
		etcd, err := connectEtcd(cmd.Context(), cfg.StoreConfig(files), log)
		if err != nil {
			return err
		}
		defer etcd.Close()
		rec := certs.Record{Cert: string(certPEM), Key: string(keyPEM), Source: certs.SourceImport, Node: cfg.Node.Name, Stored: time.Now().UTC()}
		if _, err := etcd.Put(cmd.Context(), store.CertHostKey(cfg.Project.Name, name), rec.Encode(), 0); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s: imported (%s, valid until %s)\n", name, strings.Join(leaf.DNSNames, ","), leaf.NotAfter.UTC().Format(time.RFC3339))
		return err
	})
	cmd.Flags().StringVar(&certFile, "cert", "", "PEM file: the certificate, then its chain")
	cmd.Flags().StringVar(&keyFile, "key", "", "PEM file: its private key")
	return cmd
}

// certCommand is a `certs` command on one certificate, NAME, in etcd.
func certCommand(g *globalFlags, stderr io.Writer, cmd *cobra.Command,
	run func(ctx context.Context, etcd *store.Client, cfg *spec.Spec, name string) error) *cobra.Command {
	cmd.Args = usageArgs(cobra.ExactArgs(1))
	return g.specCommand(stderr, cmd, func(cmd *cobra.Command, args []string, log zerolog.Logger, cfg *spec.Spec, files spec.Files) error {
		etcd, err := connectEtcd(cmd.Context(), cfg.StoreConfig(files), log)
		if err != nil {
			return err
		}
		defer etcd.Close()
		return run(cmd.Context(), etcd, cfg, args[0])
	})
}

func newCertsRenewCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	return certCommand(g, stderr, &cobra.Command{
		Use:   "renew NAME",
		Short: "have [acme] order NAME's certificate again now (the old one serves until the new one is in)",
	}, func(ctx context.Context, etcd *store.Client, cfg *spec.Spec, name string) error {
		msg, err := renewCert(ctx, etcd, cfg.Project.Name, name, time.Now())
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, msg)
		return err
	})
}

// renewStore is etcd as `certs renew` uses it (a *store.Client).
type renewStore interface {
	Get(ctx context.Context, key string) (store.KV, bool, error)
	PutIfUnchanged(ctx context.Context, key, value string, modRev int64) (bool, error)
}

var _ renewStore = (*store.Client)(nil)

// renewCert marks the ACME certificate name as due now, and says so. The
// write goes through only while the key is as read (the orderer may store
// a new certificate meanwhile, which must not be replaced by the old one);
// when only the record changed (another renew), it reads again.
func renewCert(ctx context.Context, etcd renewStore, project, name string, now time.Time) (string, error) {
	key := store.CertHostKey(project, name)
	var first *certs.Record
	for range 5 {
		kv, ok, err := etcd.Get(ctx, key)
		if err != nil {
			return "", err
		}
		if !ok {
			return "", fmt.Errorf("no certificate %s in etcd (%s); see upstreamd certs list", name, key)
		}
		rec, err := certs.Decode(kv.Value) // expired or not
		if err != nil {
			return "", fmt.Errorf("%s: %w", key, err)
		}
		if rec.Source != certs.SourceACME {
			return "", fmt.Errorf("%s was imported, not ordered: import its successor (upstreamd certs import)", name)
		}
		if first == nil {
			first = &rec
		} else if rec.Cert != first.Cert {
			return fmt.Sprintf("%s: a new certificate was stored meanwhile (by %s at %s); not marked for renewal again",
				name, dash(rec.Node), rec.Stored.UTC().Format(time.RFC3339)), nil
		}
		rec.RenewAt = now.UTC()
		written, err := etcd.PutIfUnchanged(ctx, key, rec.Encode(), kv.ModRevision)
		if err != nil {
			return "", err
		}
		if written {
			return name + ": due for renewal now; the daemon that holds the ACME lock orders it", nil
		}
	}
	return "", fmt.Errorf("%s keeps changing in etcd; see upstreamd certs list and try again", key)
}

func newCertsRemoveCmd(g *globalFlags, stdout, stderr io.Writer) *cobra.Command {
	return certCommand(g, stderr, &cobra.Command{
		Use:   "remove NAME",
		Short: "remove a certificate from etcd (nginx stops serving it; [acme] orders its hosts again)",
	}, func(ctx context.Context, etcd *store.Client, cfg *spec.Spec, name string) error {
		rev, err := etcd.Delete(ctx, store.CertHostKey(cfg.Project.Name, name))
		if err != nil {
			return err
		}
		if rev == 0 {
			return fmt.Errorf("no certificate %s in etcd; see upstreamd certs list", name)
		}
		_, err = fmt.Fprintf(stdout, "%s: removed\n", name)
		return err
	})
}
