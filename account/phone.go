package account

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/nyaruka/phonenumbers"
)

// NormalizePhone parses a phone number as a user typed it ("+1 415-555-0100",
// "(415) 555-0100", "0049 30 1234567") and returns it in E.164
// ("+14155550100"), the one spelling Parley uses as an account's identity.
// It is the one check of a phone number that came from a person: the
// registration API and the CLI use it, and what it returns passes IsE164.
//
// defaultRegion is the ISO 3166-1 alpha-2 region ("US", "DE") assumed for
// numbers written without a country code; with defaultRegion == "" only
// numbers starting with + and a country code are accepted.
//
// Only digits, a leading +, and spaces, dashes, dots and parentheses
// between them are accepted. Anything else is refused rather than skipped,
// because a code is about to be sent to the number: phonenumbers alone
// would drop trailing junk ("+4915123456789x") and turn letters into
// digits ("+1800 FLOWERS"), and a typo must not send an SMS to a number
// the user did not mean. Arabic-Indic and fullwidth digits count as digits.
//
// The number must also be valid, not merely well-formed: an SMS to an
// impossible number costs money and tells the user nothing. The error says
// what is wrong and what to do, once.
func NormalizePhone(raw, defaultRegion string) (string, error) {
	raw = strings.TrimSpace(raw)
	region := strings.ToUpper(strings.TrimSpace(defaultRegion))
	if raw == "" {
		return "", errors.New("phone number is empty: give it in international format, e.g. +14155550100")
	}
	if region != "" && !phonenumbers.GetSupportedRegions()[region] {
		return "", fmt.Errorf("unknown default region %q: want an ISO 3166-1 alpha-2 code such as \"US\"", defaultRegion)
	}
	digits, err := phoneDigits(raw)
	if err != nil {
		return "", err
	}
	num, err := phonenumbers.Parse(digits, region)
	if err != nil {
		return "", parseError(err, digits, region)
	}
	cc := int(num.GetCountryCode())
	where := regionName(cc)
	switch phonenumbers.IsPossibleNumberWithReason(num) {
	case phonenumbers.IS_POSSIBLE:
	case phonenumbers.INVALID_COUNTRY_CODE:
		return "", fmt.Errorf("unknown country code +%d: check the digits after the +", cc)
	case phonenumbers.TOO_SHORT:
		return "", fmt.Errorf("phone number is too short for %s: check for a missing digit", where)
	case phonenumbers.TOO_LONG:
		return "", fmt.Errorf("phone number is too long for %s: check for an extra digit", where)
	case phonenumbers.IS_POSSIBLE_LOCAL_ONLY:
		return "", fmt.Errorf("phone number is missing its area code for %s: add it after the country code", where)
	default: // INVALID_LENGTH
		return "", fmt.Errorf("phone number has the wrong number of digits for %s: check the number", where)
	}
	if !phonenumbers.IsValidNumber(num) {
		return "", fmt.Errorf("not a valid phone number for %s: check the number", where)
	}
	e164 := phonenumbers.Format(num, phonenumbers.E164)
	if !IsE164(e164) {
		// A few number plans (German fixed lines) allow more digits than
		// E.164; such a number could not be addressed on the wire.
		return "", fmt.Errorf("phone number has %d digits, more than the %d an international number may have: check for an extra digit", len(e164)-1, MaxE164Digits)
	}
	return e164, nil
}

// phoneDigits checks that raw holds only what a number is written with and
// returns its digits in ASCII, after a + if it starts with one.
func phoneDigits(raw string) (string, error) {
	var b strings.Builder
	for i, r := range raw {
		switch {
		case r == '+' || r == '\uff0b': // fullwidth plus, from CJK keyboards
			if i != 0 {
				return "", errors.New("phone number has a + after its start: + goes only in front of the country code, e.g. +14155550100")
			}
			b.WriteByte('+')
		case digitValue(r) >= 0:
			b.WriteByte(byte('0' + digitValue(r)))
		case isPhoneSeparator(r):
		default:
			return "", fmt.Errorf("phone number contains %q: write only digits, with + and the country code in front (spaces, dashes, dots and parentheses may separate them), e.g. +14155550100", r)
		}
	}
	if b.Len() == 0 || b.String() == "+" {
		return "", errors.New("phone number has no digits: give it in international format, e.g. +14155550100")
	}
	return b.String(), nil
}

// digitValue is r's value as a decimal digit in the scripts phone keyboards
// produce (ASCII, Arabic-Indic, Extended Arabic-Indic, fullwidth), or -1.
func digitValue(r rune) int {
	for _, zero := range [...]rune{'0', '\u0660', '\u06f0', '\uff10'} {
		if r >= zero && r <= zero+9 {
			return int(r - zero)
		}
	}
	return -1
}

// isPhoneSeparator reports whether r may sit between a number's digits:
// spaces (including the no-break ones pasted from web pages), dashes,
// dots and parentheses.
func isPhoneSeparator(r rune) bool {
	switch r {
	case '-', '.', '(', ')', '\t', '\u2010', '\u2011', '\u2012', '\u2013', '\u2014', '\u2212':
		return true
	}
	return unicode.Is(unicode.Zs, r)
}

// MinE164Digits and MaxE164Digits bound the digits of an E.164 number
// (country code included): E.164 allows 15, and the shortest numbers in use
// (Austria's) have 6.
const (
	MinE164Digits = 6
	MaxE164Digits = 15
)

// IsE164 reports whether s has the shape of an E.164 number: + and 6 to 15
// digits, the first not 0. It checks the shape only, not that the number
// exists: for numbers that come from a trusted source (the admin bulk
// endpoint, test accounts such as +15550000000) or that were normalised
// before. Every number NormalizePhone returns passes it.
func IsE164(s string) bool {
	if len(s) < 1+MinE164Digits || len(s) > 1+MaxE164Digits || s[0] != '+' || s[1] == '0' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// parseError turns the library's parse errors into messages that say what
// to fix. digits is the number as phoneDigits returned it.
func parseError(err error, digits, region string) error {
	switch {
	case errors.Is(err, phonenumbers.ErrInvalidCountryCode):
		if region == "" && !strings.HasPrefix(digits, "+") {
			return errors.New("phone number has no country code: start it with + and the country code, e.g. +14155550100")
		}
		return errors.New("phone number has an unknown country code: check the digits after the +")
	case errors.Is(err, phonenumbers.ErrNotANumber):
		return errors.New("not a phone number: give it in international format, e.g. +14155550100")
	case errors.Is(err, phonenumbers.ErrTooShortNSN), errors.Is(err, phonenumbers.ErrTooShortAfterIDD):
		return errors.New("phone number is too short: check for a missing digit")
	case errors.Is(err, phonenumbers.ErrNumTooLong):
		return errors.New("phone number is too long: check for an extra digit")
	default:
		return fmt.Errorf("not a phone number (%v): give it in international format, e.g. +14155550100", err)
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
