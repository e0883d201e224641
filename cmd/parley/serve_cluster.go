package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/nats-io/nats.go"
	"github.com/spf13/pflag"

	"github.com/parleyhq/parley/cluster"
	"github.com/parleyhq/parley/node"
)

// clusterFlags are serve's flags for running the node in a cluster.
type clusterFlags struct {
	name, node, listen, natsListen, creds string
	tlsCert, tlsKey, tlsCA                string
	peers, natsURLs                       []string
	replicas, partitions                  int
}

const clusterHelp = `
Cluster (NATS JetStream; without these flags the node runs alone on Pebble):
  --cluster NAME --node NAME --cluster-listen HOST:PORT --peers H:P,H:P,...
             embed a NATS server with JetStream that routes to the peers
             (the same --peers list may be given to every node); the store,
             the accounts and the keys are the cluster's, replicated
  --nats URL,...  use an external NATS system with JetStream instead
  --replicas N    copies of everything (default 3 with 3 or more nodes)
  --cluster-tls-cert F --cluster-tls-key F --cluster-tls-ca F
             encrypt and authenticate the routes between nodes (without
             them, keep the route port on a private network)
With 3 replicas, losing one node loses no acknowledged message; JetStream
does not fsync each write, so a power loss of every node at once may lose
the last moments' messages (see the cluster package's documentation).`

func (f *clusterFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.name, "cluster", "", "run as a node of the cluster NAME (embedded NATS JetStream); every node gives the same")
	fs.StringVar(&f.node, "node", "", "this node's name, unique in the cluster (letters, digits, - and _)")
	fs.StringVar(&f.listen, "cluster-listen", "", "HOST:PORT where this node accepts the other nodes' NATS routes")
	fs.StringSliceVar(&f.peers, "peers", nil, "route addresses HOST:PORT of the cluster's nodes, comma-separated (this node's may be among them)")
	fs.StringVar(&f.natsListen, "nats-listen", "", "HOST:PORT of the embedded NATS server's client port (default 127.0.0.1 and a free port)")
	fs.StringSliceVar(&f.natsURLs, "nats", nil, "URLs of an external NATS system with JetStream, comma-separated, instead of embedding a server")
	fs.StringVar(&f.creds, "nats-creds", "", "NATS credentials file for --nats")
	fs.IntVar(&f.replicas, "replicas", 0, "copies of each stream (0: 3 when the cluster has 3 or more nodes, else 1)")
	fs.StringVar(&f.tlsCert, "cluster-tls-cert", "", "PEM certificate this node presents on the routes (naming the address the others dial); with --cluster-tls-key and --cluster-tls-ca, routes are TLS both ways")
	fs.StringVar(&f.tlsKey, "cluster-tls-key", "", "PEM private key of --cluster-tls-cert")
	fs.StringVar(&f.tlsCA, "cluster-tls-ca", "", "PEM CA that signs every node's route certificate: peers without one are refused")
	fs.IntVar(&f.partitions, "partitions", 0, "queue streams, fixed when the cluster's store is created (0: 3; about one per node)")
}

// check refuses cluster flags that make no sense together.
func (f *clusterFlags) check() error {
	if !f.enabled() && (f.node != "" || f.listen != "" || len(f.peers) > 0 || f.natsListen != "" || f.replicas != 0 || f.tlsCert != "" || f.tlsKey != "" || f.tlsCA != "") {
		return errors.New("cluster flags given without --cluster NAME (or --nats URL): give the cluster a name")
	}
	return nil
}

func (f *clusterFlags) enabled() bool { return f.name != "" || len(f.natsURLs) > 0 }

// join starts the node's place in its cluster, or returns nil when the
// flags ask for a node alone.
func (f *clusterFlags) join(ctx context.Context, dataDir string, log *slog.Logger, out io.Writer) (*cluster.Cluster, *node.ClusterConfig, error) {
	if err := f.check(); err != nil || !f.enabled() {
		return nil, nil, err
	}
	var opts []nats.Option
	if f.creds != "" {
		opts = append(opts, nats.UserCredentials(f.creds))
	}
	c, err := cluster.Join(ctx, cluster.Config{
		Name: f.name, Node: f.node, Listen: f.listen, Peers: f.peers,
		NATSListen: f.natsListen, Dir: filepath.Join(dataDir, "nats"),
		NATS: f.natsURLs, NATSOptions: opts,
		Replicas: f.replicas, Log: log,
		RouteTLS: cluster.RouteTLS{Cert: f.tlsCert, Key: f.tlsKey, CA: f.tlsCA},
	})
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(out, "cluster %s: node %s, nats %s, replicas %d\n", f.name, c.Node(), c.ClientURL(), c.Replicas())
	return c, &node.ClusterConfig{Conn: c.Conn(), Node: c.Node(), Replicas: c.Replicas(), Partitions: f.partitions}, nil
}
