// Package upgradepb holds the live-upgrade handover's messages, generated
// from proto/upgrade.proto.
package upgradepb

//go:generate protoc --proto_path=../../proto --go_out=. --go_opt=paths=source_relative upgrade.proto
