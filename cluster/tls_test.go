package cluster_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/parleyhq/parley/cluster"
	"github.com/parleyhq/parley/internal/natstest"
)

// testCA makes a CA and one route certificate it signs (for 127.0.0.1,
// good as server and client: each node presents it both ways), and
// writes them as PEM files into dir.
func testCA(t *testing.T, dir, name string) cluster.RouteTLS {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name + " node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	files := cluster.RouteTLS{
		Cert: filepath.Join(dir, name+"-cert.pem"), Key: filepath.Join(dir, name+"-key.pem"), CA: filepath.Join(dir, name+"-ca.pem"),
	}
	for path, block := range map[string]*pem.Block{
		files.Cert: {Type: "CERTIFICATE", Bytes: leafDER},
		files.Key:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
		files.CA:   {Type: "CERTIFICATE", Bytes: caDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// With route TLS, nodes whose certificates the cluster's CA signed form
// the cluster, and a node with a certificate from another CA is refused
// on every route: it never reaches the cluster's JetStream, so its Join
// fails.
func TestRouteTLSAdmitsOnlyTheCAsNodes(t *testing.T) {
	dir := t.TempDir()
	good, rogue := testCA(t, dir, "cluster"), testCA(t, dir, "rogue")
	routes := natstest.FreeAddrs(t, 4)
	joinThreeWith(t, routes[:3], func(cfg *cluster.Config) { cfg.RouteTLS = good })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := cluster.Join(ctx, cluster.Config{
		Name: "tls", Node: "n4", Listen: routes[3], Peers: routes,
		Dir: t.TempDir(), RouteTLS: rogue,
	})
	if err == nil {
		c.Close()
		t.Fatal("node 4 (another CA's certificate) joined the cluster")
	}
	t.Logf("node 4 (another CA's certificate): %v", err)
}
