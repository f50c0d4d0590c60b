package render

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"text/template"
)

// KVPair is a key and its value, as confd's gets and get return them.
type KVPair struct {
	Key   string
	Value string
}

// errKeyNotFound is returned by get and getv for a missing key.
var errKeyNotFound = errors.New("key does not exist")

// kvStore implements confd's memkv lookups over the validated keys.
type kvStore map[string]string

func (s kvStore) get(key string) (KVPair, error) {
	v, ok := s[key]
	if !ok {
		return KVPair{}, fmt.Errorf("get %q: %w", key, errKeyNotFound)
	}
	return KVPair{Key: key, Value: v}, nil
}

func (s kvStore) getv(key string, def ...string) (string, error) {
	if v, ok := s[key]; ok {
		return v, nil
	}
	if len(def) > 0 {
		return def[0], nil
	}
	return "", fmt.Errorf("getv %q: %w", key, errKeyNotFound)
}

// gets returns every pair whose key matches pattern (path.Match), by key.
func (s kvStore) gets(pattern string) ([]KVPair, error) {
	out := []KVPair{}
	for k, v := range s {
		ok, err := path.Match(pattern, k)
		if err != nil {
			return nil, fmt.Errorf("gets %q: %w", pattern, err)
		}
		if ok {
			out = append(out, KVPair{Key: k, Value: v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// getvs returns the values of every key matching pattern, sorted.
func (s kvStore) getvs(pattern string) ([]string, error) {
	pairs, err := s.gets(pattern)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(pairs))
	for _, p := range pairs {
		out = append(out, p.Value)
	}
	sort.Strings(out)
	return out, nil
}

func (s kvStore) exists(key string) bool {
	_, ok := s[key]
	return ok
}

// children returns the names directly under dir; dirsOnly keeps only those
// that have keys below them (confd's lsdir), otherwise all (confd's ls).
func (s kvStore) children(dir string, dirsOnly bool) []string {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	set := map[string]bool{}
	for k := range s {
		if k == dir && !dirsOnly { // confd's ls of a key lists the key itself
			set[path.Base(k)] = true
			continue
		}
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok || rest == "" {
			continue
		}
		name, below, deeper := strings.Cut(rest, "/")
		if dirsOnly && (!deeper || below == "") {
			continue
		}
		set[name] = true
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// funcMap returns the template functions bound to kvs. Parse calls it with
// nil only to declare the names.
func funcMap(kvs map[string]string) template.FuncMap {
	s := kvStore(kvs)
	return template.FuncMap{
		// confd's store functions
		"get":    s.get,
		"gets":   s.gets,
		"getv":   s.getv,
		"getvs":  s.getvs,
		"exists": s.exists,
		"ls":     func(dir string) []string { return s.children(dir, false) },
		"lsdir":  func(dir string) []string { return s.children(dir, true) },
		// confd's helpers
		"base":           path.Base,
		"dir":            path.Dir,
		"split":          strings.Split,
		"join":           strings.Join,
		"replace":        strings.Replace,
		"contains":       strings.Contains,
		"toUpper":        strings.ToUpper,
		"toLower":        strings.ToLower,
		"trimSuffix":     strings.TrimSuffix,
		"trimPrefix":     strings.TrimPrefix,
		"json":           unmarshalObject,
		"jsonArray":      unmarshalArray,
		"atoi":           strconv.Atoi,
		"parseBool":      strconv.ParseBool,
		"add":            func(a, b int) int { return a + b },
		"sub":            func(a, b int) int { return a - b },
		"mul":            func(a, b int) int { return a * b },
		"div":            div,
		"mod":            mod,
		"seq":            seq,
		"reverse":        reverse,
		"sortByLength":   sortByLength,
		"sortKVByLength": sortKVByLength,
		"base64Encode":   func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
		"base64Decode":   base64Decode,
		"map":            createMap,
	}
}

func unmarshalObject(data string) (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		return nil, fmt.Errorf("json: %w", err)
	}
	return m, nil
}

func unmarshalArray(data string) ([]any, error) {
	var a []any
	if err := json.Unmarshal([]byte(data), &a); err != nil {
		return nil, fmt.Errorf("jsonArray: %w", err)
	}
	return a, nil
}

func div(a, b int) (int, error) {
	if b == 0 {
		return 0, errors.New("div: division by zero")
	}
	return a / b, nil
}

func mod(a, b int) (int, error) {
	if b == 0 {
		return 0, errors.New("mod: division by zero")
	}
	return a % b, nil
}

// seq returns first..last inclusive, at most 100000 numbers.
func seq(first, last int) ([]int, error) {
	if last < first {
		return []int{}, nil
	}
	if last-first >= 100000 {
		return nil, fmt.Errorf("seq %d %d: too many numbers", first, last)
	}
	out := make([]int, 0, last-first+1)
	for i := first; i <= last; i++ {
		out = append(out, i)
	}
	return out, nil
}

// reverse returns a reversed copy of a []string or []KVPair.
func reverse(v any) (any, error) {
	switch s := v.(type) {
	case []string:
		out := make([]string, len(s))
		for i, x := range s {
			out[len(s)-1-i] = x
		}
		return out, nil
	case []KVPair:
		out := make([]KVPair, len(s))
		for i, x := range s {
			out[len(s)-1-i] = x
		}
		return out, nil
	default:
		return nil, fmt.Errorf("reverse: unsupported type %T", v)
	}
}

func sortByLength(in []string) []string {
	out := append([]string(nil), in...)
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) < len(out[j]) })
	return out
}

func sortKVByLength(in []KVPair) []KVPair {
	out := append([]KVPair(nil), in...)
	sort.SliceStable(out, func(i, j int) bool { return len(out[i].Key) < len(out[j].Key) })
	return out
}

func base64Decode(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", fmt.Errorf("base64Decode: %w", err)
	}
	return string(b), nil
}

// createMap builds a map from alternating string keys and values.
func createMap(kv ...any) (map[string]any, error) {
	if len(kv)%2 != 0 {
		return nil, errors.New("map: odd number of arguments")
	}
	m := make(map[string]any, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		k, ok := kv[i].(string)
		if !ok {
			return nil, fmt.Errorf("map: key %v is not a string", kv[i])
		}
		m[k] = kv[i+1]
	}
	return m, nil
}
