package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/buildinfo"
)

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print this binary's version and Go toolchain",
		Long: `Print the version of this parley binary. Release builds stamp it:

  go build -ldflags "-X github.com/parleyhq/parley/buildinfo.version=v1.4.0" ./cmd/parley

Without a stamp it is what Go recorded: the module version, or the commit
of the checkout it was built from (devel+REV, -dirty with local changes).
A running server answers the same at GET /admin/version.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bi := buildinfo.Get()
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(bi)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "parley %s (%s)\n", bi.Version, bi.Go)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: {\"version\", \"go\", \"revision\"}")
	return cmd
}
