package flatten

import (
	"errors"
	"fmt"

	"github.com/miekg/dns"
)

// Validation of targets with `dnssec_targets secure` (policy.go): the walker asks with DO and AD
// set (RFC 6840 5.7: AD in a query asks for the AD bit in the answer; DO, RFC 3225, for the
// signatures, which a validating resolver needs to say anything) and takes only answers with AD.

// reasonUnvalidated is the reason of a chain whose upstream answer lacked AD.
const reasonUnvalidated = "unvalidated"

// validationOutcomes are the values of dnssec_validations_total's `outcome` label: validated
// chains, answers without AD, and answers the upstream found bogus (SERVFAIL with a DNSSEC EDE).
var validationOutcomes = [...]string{"secure", "unvalidated", "bogus"}

// errUnvalidated is the failure of target's chain when the upstream's answer for name (a hop of
// it) has no AD bit: EDE 5, DNSSEC Indeterminate (RFC 8914 4.6), since flatten cannot tell an
// insecure name from an upstream that did not validate. The text says which it looks like.
func errUnvalidated(target, name string, resp *dns.Msg) *resolveError {
	why := "has no signatures (insecure), or the upstream does not validate"
	if hasRRSIG(resp) {
		why = "is signed, but the upstream did not validate it"
	}
	return &resolveError{dns.ExtendedErrorCodeDNSSECIndeterminate, reasonUnvalidated,
		fmt.Sprintf("target %s is not validated: the upstream's answer for %s has no AD bit: it %s", target, name, why)}
}

// hasRRSIG reports whether resp carries signatures in its answer or authority section.
func hasRRSIG(resp *dns.Msg) bool {
	for _, sec := range [][]dns.RR{resp.Answer, resp.Ns} {
		for _, rr := range sec {
			if rr.Header().Rrtype == dns.TypeRRSIG {
				return true
			}
		}
	}
	return false
}

// dnssecEDE reports the Extended DNS Errors a validating resolver gives for data that fails
// validation (RFC 8914 4.2, 4.3, 4.6 to 4.13).
func dnssecEDE(code uint16) bool {
	switch code {
	case dns.ExtendedErrorCodeUnsupportedDNSKEYAlgorithm, dns.ExtendedErrorCodeUnsupportedDSDigestType,
		dns.ExtendedErrorCodeDNSSECIndeterminate, dns.ExtendedErrorCodeDNSBogus,
		dns.ExtendedErrorCodeSignatureExpired, dns.ExtendedErrorCodeSignatureNotYetValid,
		dns.ExtendedErrorCodeDNSKEYMissing, dns.ExtendedErrorCodeRRSIGsMissing,
		dns.ExtendedErrorCodeNoZoneKeyBitSet, dns.ExtendedErrorCodeNSECMissing:
		return true
	}
	return false
}

// validation counts the outcome of a chain resolved with `dnssec_targets secure`: failures that
// are not about validation (a timeout, a network error) are not counted.
func (t *tally) validation(c *chain, err error) {
	var re *resolveError
	switch {
	case err == nil && c != nil && c.validated:
		t.validations[0].Add(1)
	case errors.As(err, &re) && re.reason == reasonUnvalidated:
		t.validations[1].Add(1)
	case errors.As(err, &re) && re.reason == reasonRcode && dnssecEDE(re.ede):
		t.validations[2].Add(1)
	}
}

// validationState is what explain says of s's chain with `dnssec_targets secure`: secure (the
// entry served was validated), the reason the last answer was refused (unvalidated, or bogus
// with the upstream's EDE), or unknown when nothing was resolved yet.
func validationState(s *slot) string {
	if fl := s.fail.Load(); fl != nil {
		switch re := fl.err; {
		case re.reason == reasonUnvalidated:
			return "unvalidated"
		case re.reason == reasonRcode && dnssecEDE(re.ede):
			return fmt.Sprintf("bogus(ede=%d)", re.ede)
		}
	}
	if e := s.good.Load(); e != nil && e.validated {
		return "secure"
	}
	return "unknown"
}
