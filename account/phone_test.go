package account

import (
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
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
		{"hello", "US", "", "not a phone number"},
		{"4155550100", "", "", "no country code"},
		{"004930123456", "", "", "no country code"},
		{"+999 123456", "", "", "unknown country code"},
		{"+1 123-555-0100", "", "", "not a valid phone number for region US"},
		{"12", "US", "", "too short"},
		{"+1 415 555", "", "", "too short for region US"},
		{"+1 415 555 0100 9999", "", "", "too long for region US"},
		{"555-0100", "US", "", "area code"},
		{"+1 415 555 0100 ext 5", "", "", "extension"},
		{"4155550100", "XX", "", "unknown default region"},
		{"+" + strings.Repeat("1", 300), "", "", "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.raw+"/"+tt.region, func(t *testing.T) {
			got, err := Normalize(tt.raw, tt.region)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("Normalize(%q, %q) = %q, %v; want %q", tt.raw, tt.region, got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Normalize(%q, %q) = %q, %v; want an error saying %q", tt.raw, tt.region, got, err, tt.wantErr)
			}
		})
	}
}
