package nginx

import (
	"bytes"
	"fmt"
	"path"
	"regexp"
	"strings"
)

// checkInput is what checkConfig rewrites.
type checkInput struct {
	Main       []byte // the main config's text
	MainPath   string // where it lives; relative includes resolve from its directory
	ConfigPath string // the live rendered file
	StagedPath string // the candidate that replaces it in the check
	// ListDir lists the file names in a directory; it is called only for a
	// glob include that matches ConfigPath, to keep the glob's other files.
	ListDir func(dir string) ([]string, error)
}

// includeRE finds include directives: the word include, an argument (maybe
// quoted), then a semicolon.
var includeRE = regexp.MustCompile(`(^|[\s;{}])include\s+("[^"]*"|'[^']*'|[^\s;'"]+)\s*;`)

// checkConfig rewrites a main config so that it includes StagedPath where it
// included ConfigPath, either by name or through a glob (whose other
// matching files stay included). It fails when nothing in the main config
// includes ConfigPath: then the rendered file would never be read.
func checkConfig(in checkInput) ([]byte, error) {
	text := stripComments(in.Main)
	base := path.Dir(in.MainPath)
	var out bytes.Buffer
	last, found := 0, false
	// Search again from the end of each argument, not of each match: the
	// match ends with the ';' that may be all that precedes the next
	// include ("include a;include b;").
	for pos := 0; ; {
		m := includeRE.FindSubmatchIndex(text[pos:])
		if m == nil {
			break
		}
		argStart, argEnd := pos+m[4], pos+m[5]
		pos = argEnd
		arg := strings.Trim(string(text[argStart:argEnd]), `"'`)
		full := arg
		if !path.IsAbs(full) {
			full = path.Join(base, full)
		}
		var repl string
		switch {
		case full == in.ConfigPath:
			repl = in.StagedPath
		case hasGlob(full):
			ok, err := path.Match(full, in.ConfigPath)
			if err != nil || !ok {
				continue
			}
			names, err := in.ListDir(path.Dir(full))
			if err != nil {
				return nil, fmt.Errorf("list %s for the check config: %w", path.Dir(full), err)
			}
			parts := []string{in.StagedPath}
			for _, n := range names {
				p := path.Join(path.Dir(full), n)
				if p == in.ConfigPath {
					continue
				}
				if ok, _ := path.Match(full, p); ok {
					parts = append(parts, p)
				}
			}
			repl = strings.Join(parts, "; include ")
		default:
			continue
		}
		found = true
		out.Write(in.Main[last:argStart])
		out.WriteString(repl)
		last = argEnd
	}
	if !found {
		return nil, fmt.Errorf("main config %s includes neither %s nor a glob matching it, so nginx would never read the rendered config", in.MainPath, in.ConfigPath)
	}
	out.Write(in.Main[last:])
	return out.Bytes(), nil
}

func hasGlob(p string) bool { return strings.ContainsAny(p, "*?[") }

// stripComments blanks out # comments (outside quotes) without moving any
// byte, so offsets in the result index the original.
func stripComments(b []byte) []byte {
	out := append([]byte(nil), b...)
	var quote byte
	for i := 0; i < len(out); i++ {
		c := out[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			for ; i < len(out) && out[i] != '\n'; i++ {
				out[i] = ' '
			}
		}
	}
	return out
}
