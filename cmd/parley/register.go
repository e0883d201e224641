package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/noise"
)

// defaultServerURL is the HTTP API of a server started with plain
// 'parley serve'.
const defaultServerURL = "http://127.0.0.1:8080"

func newRegisterCmd() *cobra.Command {
	var (
		server, phone, code, dir string
		asJSON                   bool
		timeout                  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "register --phone NUMBER [--code CODE]",
		Short: "Register this device for a phone number",
		Long: `Register this device for a phone number, in two steps:

  1. without --code: the server sends a 6-digit code to the number by SMS
     (with 'parley serve --sms log' it appears in the server's log);
  2. with --code: this device's key is bound to the number, and the profile
     (number, server address and key, device key) is saved.

The device key is made in step 2, or reused if the profile directory already
holds one for this number, so registering again on the same device keeps its
key. Registering the number on another device logs this one out.

The profile directory defaults to ` + profileRootHelp() + `/<number without +>;
send, recv and chat find it there when it is the only one, or take --profile.
The profile holds the device's private key: it is written with mode 0600.`,
		Example: `  parley register --phone +14155550101
  parley register --phone +14155550101 --code 123456
  parley register --server http://chat.example.com:8080 --phone +14155550101 --code 123456 --profile ~/alice`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if phone == "" {
				return errors.New("--phone is required: the number to register, in international format, e.g. +14155550100")
			}
			var err error
			if server, err = listenerURL("--server", server, defaultServerURL); err != nil {
				return err
			}
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()
			hc := &http.Client{}
			out := cmd.OutOrStdout()

			if code == "" {
				res, err := client.RequestCode(ctx, hc, server, phone)
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSONLine(out, map[string]any{"status": "code_sent", "phone": res.Phone, "expires_in": int64(res.ExpiresIn / time.Second)})
				}
				next := "parley register --phone " + res.Phone + " --code CODE"
				if server != defaultServerURL {
					next = "parley register --server " + server + " --phone " + res.Phone + " --code CODE"
				}
				if dir != "" {
					next += " --profile " + dir
				}
				fmt.Fprintf(out, "A code was sent by SMS to %s; it expires in %s.\nFinish with: %s\n", res.Phone, res.ExpiresIn, next)
				return nil
			}

			// The number as the server will spell it decides the default
			// profile directory; the server has the last word (it may
			// assume a region), so this is only a first guess.
			guess := phone
			if p, err := account.NormalizePhone(phone, ""); err == nil {
				guess = p
			}
			explicitDir := dir != ""
			if !explicitDir {
				var err error
				if dir, err = defaultProfileDir(guess); err != nil {
					return err
				}
			}
			key, reused, err := deviceKey(dir, guess)
			if err != nil {
				return err
			}
			// Fail before spending the code if the profile cannot be
			// written: a key the server accepted but we lost would need a
			// new code to replace.
			if err := checkWritable(dir); err != nil {
				return err
			}
			reg, err := client.Verify(ctx, hc, server, phone, code, key.Public)
			if err != nil {
				return err
			}
			if !explicitDir && reg.Phone != guess {
				if dir, err = defaultProfileDir(reg.Phone); err != nil {
					return err
				}
			}
			p := client.Profile{
				Phone:       reg.Phone,
				Server:      server,
				NativeAddr:  fixNativeAddr(reg.NativeAddr, server),
				NativeAddrs: fixNativeAddrs(reg.NativeAddrs, server),
				ServerKey:   reg.ServerKey,
				PrivateKey:  key.Private,
				PublicKey:   key.Public,
				Generation:  reg.Generation,
			}
			if err := client.SaveProfile(dir, p); err != nil {
				return fmt.Errorf("registered %s, but %w: register again with a new code to replace the key", reg.Phone, err)
			}
			if asJSON {
				return writeJSONLine(out, map[string]any{
					"status": "registered", "phone": reg.Phone, "generation": reg.Generation,
					"profile": dir, "server": server, "native_addr": p.NativeAddr, "native_addrs": p.NativeAddrs,
					"server_key": base64.StdEncoding.EncodeToString(reg.ServerKey), "key_reused": reused,
				})
			}
			fmt.Fprintf(out, "Registered %s on this device (registration %d).\nProfile saved in %s.\nSend a message: parley send --profile %s --to NUMBER TEXT\n",
				reg.Phone, reg.Generation, dir, dir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", defaultServerURL, "the server's HTTP API: URL or HOST:PORT")
	f.StringVar(&phone, "phone", "", "phone number to register, in international format (+14155550100)")
	f.StringVar(&code, "code", "", "the 6-digit code from the SMS (omit to request one)")
	f.StringVar(&dir, "profile", "", "profile directory (default "+profileRootHelp()+"/<number without +>)")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up on the server after this long (0: never)")
	return cmd
}

// deviceKey returns the key already in dir's profile if it is phone's, or
// a new one. A profile of another number is never overwritten: its key is
// that account's only credential.
func deviceKey(dir, phone string) (kp noise.Keypair, reused bool, err error) {
	p, err := client.LoadProfile(dir)
	switch {
	case err == nil && p.Phone == phone:
		return p.Keypair(), true, nil
	case err == nil:
		return kp, false, fmt.Errorf("%s holds the profile of %s: choose another --profile for %s (or remove that directory if %s is not used here any more)", dir, p.Phone, phone, p.Phone)
	case !errors.Is(err, os.ErrNotExist):
		return kp, false, fmt.Errorf("%w\nMove it away or choose another --profile", err)
	}
	kp, err = noise.GenerateKeypair(nil)
	if err != nil {
		return kp, false, fmt.Errorf("generate device key: %w", err)
	}
	return kp, false, nil
}

// checkWritable makes dir (0700) and checks a file can be created in it.
func checkWritable(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create profile directory: %w (choose another with --profile)", err)
	}
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("cannot write the profile in %s: %w (choose another with --profile)", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}
