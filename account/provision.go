package account

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/parleyhq/parley/store"
)

// CodeExists is the error code of a provisioning request that names a
// number already registered to another key.
const CodeExists = "account_exists" // 409

// Provisioned is one account of a bulk provisioning request: a number and
// the device key to bind to it, with no SMS round.
type Provisioned struct {
	Phone string
	Key   []byte
}

// ProvisionResult says what Provision did.
type ProvisionResult struct {
	// Created counts accounts that did not exist and now do.
	Created int
	// Existing counts accounts that were already registered to the same
	// key (a repeated provisioning run): left as they are.
	Existing int
}

// Provision creates accounts in bulk for load tests and migrations, from
// the trusted admin listener. It never replaces an account: a number that
// is registered to another key makes the whole request fail with
// CodeExists before anything is written, since moving a number to a new
// device is what Verify does, with a code, a new generation and the old
// device cut off. A number already registered to the same key is left
// alone and counted as Existing, so a provisioning run can be repeated.
//
// Numbers must already be in E.164 form; only their shape is checked, not
// whether the phone-number library knows their range: an operator's
// migration carries numbers as its old system stored them, and load tests
// use the +1555 range, which is not assigned (and so never reaches a
// real phone). Verify, which sends an SMS, checks them fully. Accounts are written
// by several goroutines so that their synced writes share fsyncs.
func (s *Service) Provision(ctx context.Context, accts []Provisioned) (ProvisionResult, error) {
	norm := make([]store.Account, len(accts))
	seen := make(map[string]int, len(accts))
	now := s.cfg.Now()
	for i, a := range accts {
		phone := a.Phone
		if !IsE164(phone) {
			return ProvisionResult{}, &Error{Status: http.StatusBadRequest, Code: CodeInvalidPhone,
				Message: fmt.Sprintf("accounts[%d]: phone %q is not in E.164 form (+ and 6 to 15 digits)", i, phone)}
		}
		if err := checkKey(a.Key); err != nil {
			e := *err.(*Error)
			e.Message = fmt.Sprintf("accounts[%d]: %s", i, e.Message)
			return ProvisionResult{}, &e
		}
		if j, dup := seen[phone]; dup {
			return ProvisionResult{}, &Error{Status: http.StatusBadRequest, Code: CodeBadRequest,
				Message: fmt.Sprintf("accounts[%d] and accounts[%d] are the same number %s: give each number once", j, i, phone)}
		}
		seen[phone] = i
		norm[i] = store.Account{Phone: phone, Key: bytes.Clone(a.Key), Generation: 1, Created: now, Updated: now}
	}
	// Refuse the request before writing anything if it would replace an
	// account; the per-number locks below keep a registration racing with
	// the write from being overwritten.
	for i, a := range norm {
		old, err := s.cfg.Accounts.Account(a.Phone)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return ProvisionResult{}, internal(err)
		case !bytes.Equal(old.Key, a.Key):
			return ProvisionResult{}, &Error{Status: http.StatusConflict, Code: CodeExists,
				Message: fmt.Sprintf("accounts[%d]: %s is registered to another device; provisioning never replaces an account (the owner re-registers with an SMS code)", i, a.Phone)}
		}
	}
	var (
		wg                sync.WaitGroup
		next              atomic.Int64
		created, existing atomic.Int64
		firstErr          atomic.Pointer[error]
	)
	for range min(32, len(norm)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(norm) && firstErr.Load() == nil && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				made, err := s.create(norm[i])
				switch {
				case err != nil:
					firstErr.CompareAndSwap(nil, &err)
				case made:
					created.Add(1)
				default:
					existing.Add(1)
				}
			}
		})
	}
	wg.Wait()
	res := ProvisionResult{Created: int(created.Load()), Existing: int(existing.Load())}
	if err := firstErr.Load(); err != nil {
		return res, *err
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.Created > 0 {
		s.log.Info("accounts provisioned", "created", res.Created, "existing", res.Existing)
	}
	return res, nil
}

// create writes a if its number has no account, under the number's
// registration lock; it reports whether it wrote.
func (s *Service) create(a store.Account) (bool, error) {
	lock := &s.regLocks[maphash.String(s.seed, a.Phone)%uint64(len(s.regLocks))]
	lock.Lock()
	defer lock.Unlock()
	old, err := s.cfg.Accounts.Account(a.Phone)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return false, internal(err)
	case bytes.Equal(old.Key, a.Key):
		return false, nil
	default:
		return false, &Error{Status: http.StatusConflict, Code: CodeExists,
			Message: fmt.Sprintf("%s was registered to another device meanwhile; provisioning never replaces an account", a.Phone)}
	}
	if err := s.cfg.Accounts.PutAccount(a); err != nil {
		return false, internal(err)
	}
	return true, nil
}
