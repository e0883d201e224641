package media

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckRef(t *testing.T) {
	e := newEnv(t, nil) // BaseURL https://media.example.com/
	u := e.uploadOK("+14155550100", encodePNG(t, photo(30, 20)))
	if err := e.svc.CheckRef(u.URL, u.ID, u.MIME); err != nil {
		t.Fatalf("the upload's own answer: %v", err)
	}
	other := validUnknownID()
	// A cluster's other nodes: their links are accepted, as they build
	// them; nothing else about them is.
	e.svc.AcceptBaseURLs([]string{"https://n2.example.com/", "ftp://n3.example.com", "https://media.example.com"})
	if err := e.svc.CheckRef("https://n2.example.com/v1/media/"+u.ID, u.ID, u.MIME); err != nil {
		t.Errorf("another node's link: %v", err)
	}
	for _, tc := range []struct{ name, url, id, mime, field string }{
		{"another host", "http://evil.example/x", u.ID, u.MIME, "url"},
		{"another host, same path", "https://evil.example/v1/media/" + u.ID, u.ID, u.MIME, "url"},
		{"http for https", "http://media.example.com/v1/media/" + u.ID, u.ID, u.MIME, "url"},
		{"host in another case", "https://MEDIA.example.com/v1/media/" + u.ID, u.ID, u.MIME, "url"},
		{"userinfo", "https://media.example.com@evil.example/v1/media/" + u.ID, u.ID, u.MIME, "url"},
		{"query", u.URL + "?x=1", u.ID, u.MIME, "url"},
		{"trailing slash", u.URL + "/", u.ID, u.MIME, "url"},
		{"another id's url", e.svc.URL(other), u.ID, u.MIME, "url"},
		{"relative path", "/v1/media/" + u.ID, u.ID, u.MIME, "url"},
		{"another node, another id", "https://n2.example.com/v1/media/" + other, u.ID, u.MIME, "url"},
		{"another node, no slash", "https://n2.example.com/v1/media" + u.ID, u.ID, u.MIME, "url"},
		{"another node's host as a prefix", "https://n2.example.com.evil.example/v1/media/" + u.ID, u.ID, u.MIME, "url"},
		{"a base that is not http", "ftp://n3.example.com/v1/media/" + u.ID, u.ID, u.MIME, "url"},
		{"path traversal id", u.URL, "../../etc/passwd", u.MIME, "id"},
		{"traversal in the url", "https://media.example.com/v1/media/../../etc/passwd", "../../etc/passwd", u.MIME, "id"},
		{"empty id", u.URL, "", u.MIME, "id"},
		{"id not canonical", u.URL, u.ID[:21] + "B", u.MIME, "id"},
		{"text/html", u.URL, u.ID, "text/html", "type"},
		{"a type with parameters", u.URL, u.ID, "image/png; x=1", "type"},
		{"no type", u.URL, u.ID, "", "type"},
	} {
		err := e.svc.CheckRef(tc.url, tc.id, tc.mime)
		if !errors.Is(err, ErrBadRef) {
			t.Errorf("%s: %v, want ErrBadRef", tc.name, err)
			continue
		}
		if !strings.Contains(err.Error(), "media "+tc.field) || !strings.Contains(err.Error(), "send the") {
			t.Errorf("%s: %q does not name the %s and what to do", tc.name, err, tc.field)
		}
	}
	// Without a BaseURL the server's links are paths, and so must refs be.
	local := newEnv(t, func(c *Config) { c.BaseURL = "" })
	if err := local.svc.CheckRef("/v1/media/"+u.ID, u.ID, u.MIME); err != nil {
		t.Errorf("path link without BaseURL: %v", err)
	}
	if err := local.svc.CheckRef(u.URL, u.ID, u.MIME); err == nil {
		t.Error("absolute link accepted by a server that builds paths")
	}
}

// FuzzCheckRef checks that nothing but this server's link, a well-formed
// id and a sniffer's type is accepted.
func FuzzCheckRef(f *testing.F) {
	e := newEnv(f, nil)
	id, _ := newID()
	for _, seed := range [][3]string{
		{e.svc.URL(id), id, "image/jpeg"},
		{"http://evil.example/x", id, "image/jpeg"},
		{e.svc.URL(id), "../../etc/passwd", "image/jpeg"},
		{e.svc.URL(id), id, "text/html"},
		{e.svc.URL(id) + "#", id, "text/html; charset=utf-8"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, url, id, mime string) {
		err := e.svc.CheckRef(url, id, mime)
		if err != nil {
			if !errors.Is(err, ErrBadRef) {
				t.Fatalf("error %v does not wrap ErrBadRef", err)
			}
			return
		}
		if _, ok := parseID(id); !ok {
			t.Fatalf("accepted id %q", id)
		}
		if url != "https://media.example.com/v1/media/"+id {
			t.Fatalf("accepted url %q for id %q", url, id)
		}
		if !sniffable(mime) || strings.ContainsAny(mime, "\r\n") {
			t.Fatalf("accepted type %q", mime)
		}
	})
}
