package media_test

import (
	"testing"

	"github.com/parleyhq/parley/media"
	"github.com/parleyhq/parley/media/mediatest"
)

func TestFSStoreConformance(t *testing.T) {
	mediatest.Run(t, func(t *testing.T) media.BlobStore {
		s, err := media.NewFSStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
