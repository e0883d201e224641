package wire

// The second plugin, protoc-gen-go-vtproto (github.com/planetscale/vtprotobuf,
// go install github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@v0.6.0),
// writes parley_vtproto.pb.go: reflection-free marshal, unmarshal and size
// code for the per-message path.
//go:generate protoc --proto_path=../proto --go_out=. --go_opt=paths=source_relative --go-vtproto_out=. --go-vtproto_opt=paths=source_relative,features=marshal+unmarshal+size parley.proto
