package account

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// Normalize parses a phone number as a user typed it ("+1 415-555-0100",
// "(415) 555-0100", "0049 30 1234567") and returns it in E.164
// ("+14155550100"), the one spelling Parley uses as an account's identity.
//
// defaultRegion is the ISO 3166-1 alpha-2 region ("US", "DE") assumed for
// numbers written without a country code; with defaultRegion == "" only
// numbers starting with + and a country code are accepted.
//
// The number must be valid, not merely well-formed: a code is about to be
// sent to it, and an SMS to an impossible number costs money and tells the
// user nothing. The error says what is wrong in words a user can act on.
func Normalize(raw, defaultRegion string) (string, error) {
	raw = strings.TrimSpace(raw)
	region := strings.ToUpper(strings.TrimSpace(defaultRegion))
	if raw == "" {
		return "", errors.New("phone number is empty")
	}
	if region != "" && !phonenumbers.GetSupportedRegions()[region] {
		return "", fmt.Errorf("unknown default region %q: want an ISO 3166-1 alpha-2 code such as \"US\"", defaultRegion)
	}
	num, err := phonenumbers.Parse(raw, region)
	if err != nil {
		return "", parseError(err, raw, region)
	}
	if num.GetExtension() != "" {
		return "", errors.New("phone number has an extension: send the number alone")
	}
	cc := int(num.GetCountryCode())
	where := regionName(cc)
	switch phonenumbers.IsPossibleNumberWithReason(num) {
	case phonenumbers.IS_POSSIBLE:
	case phonenumbers.INVALID_COUNTRY_CODE:
		return "", fmt.Errorf("unknown country code +%d", cc)
	case phonenumbers.TOO_SHORT:
		return "", fmt.Errorf("phone number is too short for %s", where)
	case phonenumbers.TOO_LONG:
		return "", fmt.Errorf("phone number is too long for %s", where)
	case phonenumbers.IS_POSSIBLE_LOCAL_ONLY:
		return "", fmt.Errorf("phone number is missing its area code for %s", where)
	default: // INVALID_LENGTH
		return "", fmt.Errorf("phone number has the wrong number of digits for %s", where)
	}
	if !phonenumbers.IsValidNumber(num) {
		return "", fmt.Errorf("not a valid phone number for %s", where)
	}
	return phonenumbers.Format(num, phonenumbers.E164), nil
}

// parseError turns the library's parse errors into messages that say what
// to fix.
func parseError(err error, raw, region string) error {
	switch {
	case errors.Is(err, phonenumbers.ErrInvalidCountryCode):
		if region == "" && !strings.HasPrefix(raw, "+") && !strings.HasPrefix(raw, "\uff0b") {
			return errors.New("phone number has no country code: start it with + and the country code, e.g. +14155550100")
		}
		return errors.New("phone number has an unknown country code")
	case errors.Is(err, phonenumbers.ErrNotANumber):
		return errors.New("not a phone number")
	case errors.Is(err, phonenumbers.ErrTooShortNSN), errors.Is(err, phonenumbers.ErrTooShortAfterIDD):
		return errors.New("phone number is too short")
	case errors.Is(err, phonenumbers.ErrNumTooLong):
		return errors.New("phone number is too long")
	default:
		return fmt.Errorf("not a phone number: %v", err)
	}
}

// regionName names where a country calling code belongs, for messages:
// "region US", or "country code +800" for non-geographic codes.
func regionName(cc int) string {
	r := phonenumbers.GetRegionCodeForCountryCode(cc)
	if r == "" || r == "ZZ" || r == "001" {
		return fmt.Sprintf("country code +%d", cc)
	}
	return "region " + r
}
