package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/media"
	"github.com/parleyhq/parley/media/objstore"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/jetstream"
)

// ClusterConfig makes a node one of a cluster (see package cluster, which
// provides the connection): its store is JetStream (store/jetstream), not
// Pebble; the server key and the resumption ticket key are the cluster's,
// so a device may log in on any node; media are kept in a JetStream object
// store bucket (media/objstore), not the data directory, so any node
// serves any node's uploads, and upload tokens are signed with the
// cluster's key; and a message to a user connected to another node is
// delivered live (see route_cluster.go).
type ClusterConfig struct {
	// Conn is connected to the cluster's NATS system, with JetStream.
	// The node does not close it.
	Conn *nats.Conn
	// Node is this node's name, unique in the cluster: letters, digits,
	// '-' and '_'.
	Node string
	// Replicas is every stream's replication factor. Default 1.
	Replicas int
	// Partitions is the number of queue streams, fixed when the cluster's
	// store is created (later values must match or be 0). Default 3
	// (see jetstream.Options.Partitions).
	Partitions int
	// Timeout bounds each JetStream request. Default 2 s.
	Timeout time.Duration
}

var nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// clusterState is what a node of a cluster holds beside its store.
type clusterState struct {
	ticketSecret []byte
	settings     njs.KeyValue
	// media holds the cluster's media (a JetStream object store bucket),
	// so that every node serves every node's uploads; mediaSecret signs
	// upload tokens, the same on every node, so that a token one node
	// issued is good on all (behind one --public-url, say).
	media       media.BlobStore
	mediaSecret []byte
}

// Names of the cluster's JetStream state beside the store's streams.
const (
	// settingsBucket holds what every node must share and that is made
	// once, by the first node to start: the server key, the ticket key.
	settingsBucket = "parley_settings"
	// sessionsBucket holds the hints of where users are connected.
	sessionsBucket = "parley_sessions"
	// mediaBucket is the object store bucket of the cluster's media.
	mediaBucket = "parley_media"
)

// joinCluster opens the cluster's store and shared settings and sets up
// the router to the other nodes. It waits (bounded by ctx) for the
// streams to be placed: a stream of 3 replicas needs 3 nodes up.
func (n *Node) joinCluster(ctx context.Context) error {
	cc := n.cfg.Cluster
	if cc.Conn == nil {
		return errors.New("cluster: no NATS connection")
	}
	if !nodeNameRE.MatchString(cc.Node) {
		return fmt.Errorf("cluster: node name %q: use 1 to 64 letters, digits, '-' or '_'", cc.Node)
	}
	if cc.Replicas <= 0 {
		cc.Replicas = 1
	}
	if cc.Timeout <= 0 {
		cc.Timeout = 2 * time.Second
	}
	js, err := njs.New(cc.Conn)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	var st *jetstream.Store
	err = n.retryPlacement(ctx, "the store's streams", func(ctx context.Context) error {
		st, err = jetstream.Open(ctx, cc.Conn, jetstream.Options{
			Store:      n.storeOptions(),
			Partitions: cc.Partitions,
			Replicas:   cc.Replicas,
			Timeout:    cc.Timeout,
			Log:        n.log,
		})
		return err
	})
	if err != nil {
		return err
	}
	n.store = st
	var settings, sessions njs.KeyValue
	err = n.retryPlacement(ctx, "the cluster's key-value buckets", func(ctx context.Context) error {
		if settings, err = openBucket(ctx, js, settingsBucket, cc.Replicas); err != nil {
			return err
		}
		sessions, err = openBucket(ctx, js, sessionsBucket, cc.Replicas)
		return err
	})
	if err != nil {
		return err
	}
	// The server key: every node must present the key devices pinned.
	// The first node to start offers its own; the others take it.
	kp, err := sharedSecret(ctx, settings, "server-key", append(append([]byte(nil), n.key.Private...), n.key.Public...))
	if err != nil {
		return fmt.Errorf("cluster: server key: %w", err)
	}
	if len(kp) != 2*noise.KeyLen {
		return fmt.Errorf("cluster: the cluster's server key is %d bytes, want %d", len(kp), 2*noise.KeyLen)
	}
	if !bytes.Equal(kp[noise.KeyLen:], n.key.Public) {
		n.log.Info("using the cluster's server key, not this node's own", "server_key", fmt.Sprintf("%x", kp[noise.KeyLen:]))
	}
	n.key = noise.Keypair{Private: kp[:noise.KeyLen], Public: kp[noise.KeyLen:]}
	ticket := make([]byte, 32)
	if _, err := rand.Read(ticket); err != nil {
		return err
	}
	if ticket, err = sharedSecret(ctx, settings, "ticket-key", ticket); err != nil {
		return fmt.Errorf("cluster: ticket key: %w", err)
	}
	mediaSecret := make([]byte, 32)
	if _, err := rand.Read(mediaSecret); err != nil {
		return err
	}
	if mediaSecret, err = sharedSecret(ctx, settings, "media-secret", mediaSecret); err != nil {
		return fmt.Errorf("cluster: media upload token key: %w", err)
	}
	var blobs *objstore.Store
	err = n.retryPlacement(ctx, "the media bucket", func(ctx context.Context) error {
		blobs, err = objstore.Open(ctx, js, objstore.Options{
			Bucket:   mediaBucket,
			Replicas: cc.Replicas,
			SpoolDir: filepath.Join(n.cfg.DataDir, "media-spool"),
			Timeout:  cc.Timeout,
		})
		return err
	})
	if err != nil {
		return err
	}
	n.cluster = &clusterState{ticketSecret: ticket, settings: settings, media: blobs, mediaSecret: mediaSecret}
	r, err := newClusterRouter(n, n.router.(*router), cc, sessions)
	if err != nil {
		return err
	}
	n.router = r
	return nil
}

// retryPlacement runs f until it succeeds or ctx ends: right after a
// cluster forms, and while fewer nodes than replicas are up, JetStream
// refuses to place streams; it logs what it waits for now and then.
func (n *Node) retryPlacement(ctx context.Context, what string, f func(context.Context) error) error {
	logged := time.Now()
	for {
		// Each request has its own bound (see jetstream.EnsureStream);
		// this one only ends a try that keeps getting no answer.
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := f(rctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cluster: open %s: %w (are enough nodes up for the replicas asked for?)", what, err)
		}
		if time.Since(logged) > 5*time.Second {
			logged = time.Now()
			n.log.Info("cluster: waiting to open "+what+": start the other nodes", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// openBucket opens (creating if needed) a key-value bucket whose reads go
// to its stream's leader: a key just written is always seen, which the
// router's compare-and-sets and the settings need (a direct get may be
// answered by a lagging replica).
func openBucket(ctx context.Context, js njs.JetStream, bucket string, replicas int) (njs.KeyValue, error) {
	_, err := jetstream.EnsureStream(ctx, js, njs.StreamConfig{
		Name:              "KV_" + bucket,
		Subjects:          []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: 1,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxMsgSize:        -1,
		MaxConsumers:      -1,
		Storage:           njs.FileStorage,
		Replicas:          replicas,
		Discard:           njs.DiscardNew,
		AllowRollup:       true,
		DenyDelete:        true,
		Duplicates:        2 * time.Minute,
		AllowDirect:       false,
	}, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	return kv, nil
}

// sharedSecret returns the value of key, storing offer as its value if it
// has none: made once, by whichever node comes first.
func sharedSecret(ctx context.Context, kv njs.KeyValue, key string, offer []byte) ([]byte, error) {
	for range 5 {
		e, err := kv.Get(ctx, key)
		if err == nil {
			return e.Value(), nil
		}
		if !errors.Is(err, njs.ErrKeyNotFound) {
			return nil, err
		}
		if _, err := kv.Create(ctx, key, offer); err != nil && !errors.Is(err, njs.ErrKeyExists) {
			return nil, err
		}
		// Stored, or another node stored its own first: read it back.
	}
	return nil, fmt.Errorf("key %s keeps changing", key)
}

// nativeKeyPrefix prefixes, in the settings bucket, each node's native
// address (native.NODE), so that any node can tell clients every node's.
const nativeKeyPrefix = "native."

// publishNativeAddr records this node's native address in the cluster's
// settings, replacing what the node wrote at its last start.
func (n *Node) publishNativeAddr(ctx context.Context) error {
	if n.cluster == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Cluster.Timeout)
	defer cancel()
	if _, err := n.cluster.settings.PutString(ctx, nativeKeyPrefix+n.cfg.Cluster.Node, n.AdvertisedAddr()); err != nil {
		return fmt.Errorf("cluster: publish the native address: %w", err)
	}
	return nil
}

// nativeAddrs is every native address of the cluster, sorted; for a node
// alone, or when the settings cannot be read, only its own. A node that
// left the cluster stays listed: clients move on from an address that
// does not answer.
func (n *Node) nativeAddrs(ctx context.Context) []string {
	own := []string{n.AdvertisedAddr()}
	if n.cluster == nil {
		return own
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Cluster.Timeout)
	defer cancel()
	keys, err := n.cluster.settings.ListKeysFiltered(ctx, nativeKeyPrefix+">")
	if err != nil {
		n.log.Warn("cluster: cannot list the nodes' native addresses; answering only this node's", "err", err)
		return own
	}
	defer keys.Stop()
	var addrs []string
	for k := range keys.Keys() {
		e, err := n.cluster.settings.Get(ctx, k)
		if err != nil {
			n.log.Warn("cluster: cannot read a node's native address", "key", k, "err", err)
			continue
		}
		addrs = append(addrs, string(e.Value()))
	}
	if !slices.Contains(addrs, own[0]) {
		addrs = append(addrs, own[0])
	}
	slices.Sort(addrs)
	return slices.Compact(addrs)
}

// ticketSecret is the resumption ticket key: the cluster's, or the one in
// the data directory's file at path.
func (n *Node) ticketSecret(path string) ([]byte, error) {
	if n.cluster != nil {
		return n.cluster.ticketSecret, nil
	}
	return loadOrCreateSecret(path, "devices then log in with a full handshake once")
}

// storeOptions are the store limits and hooks of the node's
// configuration, for either store.
func (n *Node) storeOptions() store.Options {
	return store.Options{
		MaxQueueLen:    n.cfg.Limits.MaxQueueLen,
		MaxAge:         n.cfg.Limits.MaxQueueAge,
		MaxQueueStates: n.cfg.Limits.QueueStates,
		AccountCache:   n.cfg.Limits.AccountCache,
		MemTableSize:   n.cfg.StoreMemTableSize,
		LazyDelay:      n.cfg.StoreLazyDelay,
		OnExpire: func(user string, it store.Item) {
			n.mx.Expired.Inc()
			n.log.Warn("queue item expired undelivered", "user", user, "seq", it.Seq, "queued", time.Unix(0, it.TS))
		},
		OnGroup: func(batches int) {
			n.mx.CommitBatchSize.Observe(float64(batches))
			n.smallGroup.Store(batches <= maxInlineGroup)
		},
		FS: n.cfg.StoreFS,
	}
}

// publicURLKeyPrefix prefixes, in the settings bucket, each node's public
// HTTP base (public-url.NODE): media links are built on it, and every
// node accepts every node's links, since they share the media bucket.
const publicURLKeyPrefix = "public-url."

// shareMediaLinks publishes this node's public URL and keeps the media
// service accepting the links of every node of the cluster, until ctx
// ends. A node not yet seen only means its links are refused (clearly,
// with ErrBadRef) a moment longer.
func (n *Node) shareMediaLinks(ctx context.Context) {
	for {
		pctx, cancel := context.WithTimeout(ctx, n.cfg.Cluster.Timeout)
		_, err := n.cluster.settings.PutString(pctx, publicURLKeyPrefix+n.cfg.Cluster.Node, n.cfg.PublicURL)
		cancel()
		if err == nil {
			break
		}
		n.log.Warn("cluster: cannot publish this node's public URL; trying again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	for ctx.Err() == nil {
		w, err := n.cluster.settings.Watch(ctx, publicURLKeyPrefix+">")
		if err != nil {
			n.log.Warn("cluster: cannot watch the nodes' public URLs; trying again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		bases := map[string]string{}
		for e := range w.Updates() {
			if e == nil {
				continue // the end of the values stored so far
			}
			if e.Operation() == njs.KeyValuePut {
				bases[e.Key()] = string(e.Value())
			} else {
				delete(bases, e.Key())
			}
			n.media.AcceptBaseURLs(slices.Collect(maps.Values(bases)))
		}
		_ = w.Stop()
	}
}
