package account

import (
	"strconv"
	"strings"
	"testing"

	"github.com/nyaruka/phonenumbers"
)

func TestNormalizePhone(t *testing.T) {
	tests := []struct {
		raw, region string
		want        string // E.164, or "" for an error
		wantErr     string // part of the error message
	}{
		{"+1 415-555-0100", "", "+14155550100", ""},
		{"+14155550100", "", "+14155550100", ""},
		{"  +1 (415) 555-0100  ", "", "+14155550100", ""},
		{"(415) 555-0100", "US", "+14155550100", ""},
		{"415.555.0100", "us", "+14155550100", ""},
		{"011 49 30 12345678", "US", "+493012345678", ""},
		{"0049 30 12345678", "DE", "+493012345678", ""},
		{"030 12345678", "DE", "+493012345678", ""},
		{"020 7946 0018", "GB", "+442079460018", ""},
		{"+44 20 7946 0018", "US", "+442079460018", ""}, // + wins over the region
		{"+91 98765 43210", "", "+919876543210", ""},
		{"+1 613 555 0101", "", "+16135550101", ""}, // Canada shares +1

		{"", "US", "", "empty"},
		{"   ", "", "", "empty"},
		{"hello", "US", "", `contains 'h'`},
		{"+49 30 1234567890123", "", "", "more than the 15"}, // valid in Germany, not E.164
		{"4155550100", "", "", "no country code"},
		{"004930123456", "", "", "no country code"},
		{"+999 123456", "", "", "unknown country code"},
		{"+1 123-555-0100", "", "", "not a valid phone number for region US"},
		{"12", "US", "", "too short"},
		{"+1 415 555", "", "", "too short for region US"},
		{"+1 415 555 0100 9999", "", "", "too long for region US"},
		{"555-0100", "US", "", "area code"},
		{"+1 415 555 0100 ext 5", "", "", `contains 'e'`},

		// A typo must not reach another number: phonenumbers alone drops
		// trailing junk and reads letters as keypad digits.
		{"+4915123456789x", "", "", `contains 'x'`},
		{"+1800 FLOWERS", "", "", `contains 'F'`},
		{"+1 415 555 0100#", "", "", `contains '#'`},
		{"tel:+1-415-555-0100", "", "", `contains 't'`},
		{"+1 415/555 0100", "", "", `contains '/'`},
		{"+1 415 555 0100+", "", "", "+ goes only in front"},
		{"+", "", "", "no digits"},
		{"()-.", "US", "", "no digits"},

		// What people do write: separators, other digit scripts.
		{"+1 (415) 555.0100", "", "+14155550100", ""},
		{"+1 415‑555‑0100", "", "+14155550100", ""},
		{"＋１４１５５５５０１００", "", "+14155550100", ""},
		{"+١٤١٥٥٥٥٠١٠٠", "", "+14155550100", ""},
		{"+43 1 2345", "", "+4312345", ""}, // Vienna: among the shortest numbers in use
		{"4155550100", "XX", "", "unknown default region"},
		{"+" + strings.Repeat("1", 300), "", "", "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.raw+"/"+tt.region, func(t *testing.T) {
			got, err := NormalizePhone(tt.raw, tt.region)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("NormalizePhone(%q, %q) = %q, %v; want %q", tt.raw, tt.region, got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NormalizePhone(%q, %q) = %q, %v; want an error saying %q", tt.raw, tt.region, got, err, tt.wantErr)
			}
		})
	}
}

// TestPhoneErrorsSayItOnce pins that every refusal says what to do, and says
// it once: the registration API passes these messages on as they are.
func TestPhoneErrorsSayItOnce(t *testing.T) {
	for _, raw := range []string{"", "4155550100", "+999 123456", "+1 415 555", "+4915123456789x", "+1 415 555 0100+", "hello"} {
		_, err := NormalizePhone(raw, "")
		if err == nil {
			t.Fatalf("NormalizePhone(%q) accepted it", raw)
		}
		msg := err.Error()
		if n := strings.Count(msg, "e.g."); n > 1 {
			t.Errorf("NormalizePhone(%q): %q gives %d examples", raw, msg, n)
		}
		if !strings.Contains(msg, ": ") {
			t.Errorf("NormalizePhone(%q): %q does not say what to do", raw, msg)
		}
	}
}

func TestIsE164(t *testing.T) {
	for s, want := range map[string]bool{
		"+14155550100": true, "+15550000000": true, "+4312345": true, "+123456789012345": true,
		"": false, "+": false, "14155550100": false, "+04155550100": false, "+12345": false,
		"+1234567890123456": false, "+1 415 555 0100": false, "+1415555010x": false, "+\u0661\u0664\u0661\u0665\u0665\u0665": false,
	} {
		if got := IsE164(s); got != want {
			t.Errorf("IsE164(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestMinE164Digits checks MinE164Digits against the number-plan data: if
// the data ever allows a shorter number, IsE164 would refuse what
// NormalizePhone accepts. (Longer ones exist, German fixed lines of up to
// 17 digits: NormalizePhone refuses those itself.)
func TestMinE164Digits(t *testing.T) {
	c, err := phonenumbers.MetadataCollection()
	if err != nil {
		t.Fatal(err)
	}
	shortest := 100
	for _, md := range c.GetMetadata() {
		cc := len(strconv.Itoa(int(md.GetCountryCode())))
		for _, l := range md.GetGeneralDesc().GetPossibleLength() {
			shortest = min(shortest, cc+int(l))
		}
	}
	if shortest < MinE164Digits {
		t.Fatalf("the number plans allow numbers of %d digits; IsE164 wants %d or more", shortest, MinE164Digits)
	}
}
