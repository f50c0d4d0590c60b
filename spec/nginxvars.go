package spec

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// What nginx reads as a variable in a response header's value (add_header
// compiles it): $name, or ${name} when letters follow; a name is letters,
// digits and _, in any case. A name it does not know, or a $ that starts
// none, makes nginx refuse the whole config, and nginx has no way to
// write a literal $; so validation refuses both, naming the key.

// nginxVariables are the variables nginx 1.22 knows in upstreamd/nginx
// (its built-in modules, and the echo and Lua modules it loads), found by
// running `nginx -t` on each name the binaries hold; nginxVariablePrefixes
// are its families ($http_x_request_id: a request header). The variables
// of a module upstreamd/nginx does not load (geoip, njs) are unknown.
// TestNginxAcceptsWhatValidationAccepts checks each against the image.
var (
	nginxVariables = wordSet(`
		ancient_browser args binary_remote_addr body_bytes_sent bytes_sent
		connection connection_requests connection_time connections_active
		connections_reading connections_waiting connections_writing content_length
		content_type date_gmt date_local document_root document_uri
		echo_cacheable_request_uri echo_client_request_headers
		echo_client_request_method echo_incr echo_it echo_request_body
		echo_request_method echo_request_uri echo_response_status echo_timer_elapsed
		fastcgi_path_info fastcgi_script_name gzip_ratio host hostname http2 https
		invalid_referer is_args limit_conn_status limit_rate limit_req_status
		modern_browser msec msie nginx_version pid pipe proxy_add_x_forwarded_for
		proxy_host proxy_port proxy_protocol_addr proxy_protocol_port
		proxy_protocol_server_addr proxy_protocol_server_port query_string
		realip_remote_addr realip_remote_port realpath_root remote_addr remote_port
		remote_user request request_body request_body_file request_completion
		request_filename request_id request_length request_method request_time
		request_uri scheme secure_link secure_link_expires server_addr server_name
		server_port server_protocol slice_range ssl_alpn_protocol ssl_cipher
		ssl_ciphers ssl_client_cert ssl_client_escaped_cert ssl_client_fingerprint
		ssl_client_i_dn ssl_client_i_dn_legacy ssl_client_raw_cert ssl_client_s_dn
		ssl_client_s_dn_legacy ssl_client_serial ssl_client_v_end
		ssl_client_v_remain ssl_client_v_start ssl_client_verify ssl_curve
		ssl_curves ssl_early_data ssl_protocol ssl_server_name ssl_session_id
		ssl_session_reused status tcpinfo_rcv_space tcpinfo_rtt tcpinfo_rttvar
		tcpinfo_snd_cwnd time_iso8601 time_local uid_got uid_reset uid_set
		upstream_addr upstream_bytes_received upstream_bytes_sent
		upstream_cache_etag upstream_cache_last_modified upstream_cache_status
		upstream_connect_time upstream_header_time upstream_response_length
		upstream_response_time upstream_status uri
	`)
	nginxVariablePrefixes = []string{"http_", "sent_http_", "sent_trailer_", "cookie_", "arg_",
		"upstream_http_", "upstream_trailer_", "upstream_cookie_"}
)

// NginxVariables lists the variables validation lets a response header
// name, sorted, and the prefixes of their families (http_, cookie_, ...):
// what TestNginxAcceptsWhatValidationAccepts checks against the image.
func NginxVariables() (names, prefixes []string) {
	return slices.Sorted(maps.Keys(nginxVariables)), slices.Clone(nginxVariablePrefixes)
}

func wordSet(s string) map[string]bool {
	out := map[string]bool{}
	for _, w := range strings.Fields(s) {
		out[w] = true
	}
	return out
}

// knownVariable reports whether nginx knows the variable name.
func knownVariable(name string) bool {
	name = strings.ToLower(name)
	if nginxVariables[name] {
		return true
	}
	for _, p := range nginxVariablePrefixes {
		if len(name) > len(p) && strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// errLiteralDollar: a $ that starts no variable.
var errLiteralDollar = errors.New("a $ must start an nginx variable ($host or ${host}); nginx has no way to write a literal $")

// checkVariables checks that every $ in s starts a variable nginx knows.
func checkVariables(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			continue
		}
		rest := s[i+1:]
		var name string
		if braced, ok := strings.CutPrefix(rest, "{"); ok {
			end := strings.IndexByte(braced, '}')
			if end < 0 {
				return errors.New("${ without its }")
			}
			name = braced[:end]
			i += end + 2
			if name == "" || strings.IndexFunc(name, func(r rune) bool { return !isNameChar(r) }) >= 0 {
				return fmt.Errorf("${%s} is not a variable: a name is letters, digits and _", name)
			}
		} else {
			n := strings.IndexFunc(rest, func(r rune) bool { return !isNameChar(r) })
			if n < 0 {
				n = len(rest)
			}
			if n == 0 {
				return errLiteralDollar
			}
			name = rest[:n]
			i += n
		}
		if !knownVariable(name) {
			return fmt.Errorf("$%s is not a variable nginx knows", name)
		}
	}
	return nil
}

func isNameChar(r rune) bool { return r == '_' || isAlnum(r) }
