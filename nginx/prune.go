package nginx

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
)

// pruneScript removes the files directly in the directories $@ whose path
// is not a line of stdin, and prints the path of each it removed: every
// file no config or answer names any more goes in one round trip. A
// directory that does not exist has nothing to remove.
const pruneScript = `keep="
$(cat)
"
for d in "$@"; do
	for f in "$d"/*; do
		[ -f "$f" ] || [ -L "$f" ] || continue
		case "$keep" in *"
$f
"*) continue ;; esac
		rm -f "$f" || exit 1
		printf '%s\n' "$f"
	done
done`

// Prune removes from the proxy the files directly in dirs that keep does
// not name (by path), in one exec, and returns their paths. The caller
// keeps every file the live config and any candidate still name: it calls
// Prune once a config is live and confirmed, never while another config
// that could name other files is being checked.
//
// The first Prune of a Session looks at everything in dirs (files of an
// earlier daemon, or of this proxy before it restarted). After that only
// the files this Session wrote can be stale, so a Prune that would remove
// none of them makes no call at all.
func (s *Session) Prune(ctx context.Context, dirs []string, keep map[string]bool) ([]string, error) {
	stale := s.staleWritten(dirs, keep)
	if len(stale) == 0 && !slices.ContainsFunc(dirs, func(d string) bool { return !s.swept[d] }) {
		return nil, nil
	}
	var list strings.Builder
	for _, p := range slices.Sorted(maps.Keys(keep)) {
		list.WriteString(p + "\n")
	}
	res, err := s.cfg.Docker.ExecWithStdin(ctx, s.proxy.ID, append([]string{"sh", "-c", pruneScript, "upstreamd-prune"}, dirs...),
		[]byte(list.String()))
	if err != nil {
		return nil, fmt.Errorf("remove old files: %w", err)
	}
	var removed []string
	for _, p := range strings.Split(string(res.Stdout), "\n") {
		if p != "" {
			removed = append(removed, p)
			delete(s.written, p) // written again when asked for again
		}
	}
	if res.ExitCode != 0 {
		return removed, fmt.Errorf("remove old files in %s: exit code %d: %s", strings.Join(dirs, ", "), res.ExitCode, res.Output())
	}
	for _, p := range stale {
		delete(s.written, p) // gone, whether the script or something else removed it
	}
	if s.swept == nil {
		s.swept = map[string]bool{}
	}
	for _, d := range dirs {
		s.swept[d] = true
	}
	return removed, nil
}

// staleWritten returns the files this Session wrote into dirs that keep
// does not name.
func (s *Session) staleWritten(dirs []string, keep map[string]bool) []string {
	var out []string
	for p := range s.written {
		if !keep[p] && slices.Contains(dirs, path.Dir(p)) {
			out = append(out, p)
		}
	}
	return out
}
