package render

import (
	"fmt"
	"testing"
)

// TestCertsBySNI: each host gets the first certificate that covers it
// (wildcards one label deep), the default otherwise; a block whose hosts
// need different certificates is split.
func TestCertsBySNI(t *testing.T) {
	tls := &TLS{Certs: []TLSCert{
		{Names: []string{"a.example"}, CertPath: "a"},
		{Names: []string{"b.example", "*.b.example"}, CertPath: "b"},
	}}
	servers := []Server{{Names: []string{"a.example", "b.example", "x.b.example", "y.x.b.example", "other.example"}, Fallback: "web"}, {Fallback: "web"}}
	var got []string
	for _, s := range splitByCert(servers, tls) {
		got = append(got, fmt.Sprintf("%v:%s", s.Names, s.Cert.CertPath))
	}
	want := "[[a.example y.x.b.example other.example]:a [b.example x.b.example]:b []:a]"
	if fmt.Sprint(got) != want {
		t.Errorf("blocks %v; want %s", got, want)
	}
}
