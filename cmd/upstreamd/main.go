// Command upstreamd turns a Docker host into a self-healing, load-balanced
// web service: it supervises an nginx proxy, its data-volume container and N
// backends, registers the healthy backends in etcd and keeps nginx's
// upstream config in step. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/upstreamd/upstreamd/cluster"
	"github.com/upstreamd/upstreamd/spec"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	// The one signal handler: the first SIGINT/SIGTERM cancels ctx, a second
	// one exits at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore default handling: the next signal kills the process
	}()

	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := negativeNumber(args)
	if err == nil {
		err = root.ExecuteContext(ctx)
	}
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "upstreamd:", err) // nowhere left to report a failure to write it
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// negativeNumber refuses an argument such as -1 before cobra reads it as
// a flag "1" and says "unknown shorthand flag".
func negativeNumber(args []string) error {
	for _, a := range args {
		if a == "--" {
			return nil
		}
		if len(a) > 1 && a[0] == '-' && strings.Trim(a[1:], "0123456789") == "" {
			return usageError{fmt.Errorf("%s: a negative number is not a valid argument (replicas are 1-%d)", a, cluster.MaxReplicas)}
		}
	}
	return nil
}

// usageError marks errors in the command line itself.
type usageError struct{ error }

// usageArgs marks a wrong number of arguments as a usage error (exit 2).
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

type globalFlags struct {
	config    string
	logFormat string
	logLevel  string
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:     "upstreamd",
		Short:   "nginx in front of replicated containers, kept in step through etcd",
		Version: version,
		Args:    usageArgs(cobra.NoArgs), // an unknown command is a usage error
		RunE: func(cmd *cobra.Command, _ []string) error {
			_ = cmd.Usage() // to stderr; the error below says what is wrong
			return usageError{errors.New("no command given")}
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		// Every command's flags are checked, whether it logs or not.
		PersistentPreRunE: func(*cobra.Command, []string) error {
			_, err := g.logger(stderr)
			return err
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVarP(&g.config, "config", "c", os.Getenv("UPSTREAMD_CONFIG"),
		"spec file (TOML), default $UPSTREAMD_CONFIG; empty means the built-in defaults (the seed's 3 Apache behind nginx)")
	pf.StringVar(&g.logFormat, "log-format", "json", "log format: json or console")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	root.AddCommand(
		newRunCmd(g, stderr),
		newRenderCmd(g, stdout, stderr),
		newStatusCmd(g, stdout, stderr),
		newEventsCmd(g, stdout, stderr),
		newScaleCmd(g, stdout, stderr),
		newCertsCmd(g, stdout, stderr),
		&cobra.Command{
			Use:   "version",
			Short: "print the version",
			Args:  usageArgs(cobra.NoArgs),
			RunE: func(cmd *cobra.Command, _ []string) error {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), "upstreamd", version)
				return err
			},
		},
	)
	return root
}

// specCommand returns c running run with the logger, and the spec and
// what its files hold, that the global flags give: the shape of every
// command but version.
func (g *globalFlags) specCommand(stderr io.Writer, c *cobra.Command,
	run func(cmd *cobra.Command, args []string, log zerolog.Logger, cfg *spec.Spec, files spec.Files) error) *cobra.Command {
	c.RunE = func(cmd *cobra.Command, args []string) error {
		log, err := g.logger(stderr)
		if err != nil {
			return err
		}
		cfg, files, err := spec.Load(g.config, spec.ThisHost())
		if err != nil {
			return err
		}
		return run(cmd, args, log, cfg, files)
	}
	return c
}

// logger builds the process logger from the flags.
func (g *globalFlags) logger(w io.Writer) (zerolog.Logger, error) {
	levels := map[string]zerolog.Level{"debug": zerolog.DebugLevel, "info": zerolog.InfoLevel, "warn": zerolog.WarnLevel, "error": zerolog.ErrorLevel}
	level, ok := levels[g.logLevel]
	if !ok {
		return zerolog.Nop(), usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)}
	}
	switch g.logFormat {
	case "json":
	case "console":
		// Colors only for a terminal; a pipe or file gets plain text.
		color := false
		if f, ok := w.(*os.File); ok {
			color = isatty.IsTerminal(f.Fd())
		}
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000", NoColor: !color}
	default:
		return zerolog.Nop(), usageError{fmt.Errorf("--log-format %q: want json or console", g.logFormat)}
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}
