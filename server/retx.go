package server

import "math"

// retxDue returns t0 + T·(2^(k+1) − 1): when a push first sent at t0 that
// has been resent k times is due again (its k+1-th resend, or the 4005
// close once k is --ack-retries; PROTOCOL §7). With k = 0 that is t0 + T,
// the first resend.
//
// The sum saturates at math.MaxInt64 ("never") instead of wrapping: with
// --ack-retries 20 (2^21 − 1 ≈ 2.1e6) a T of an hour already overflows
// int64 nanoseconds, and a wrapped, negative deadline would resend at once
// and close the connection 4005 early. T ≥ 0, k ≤ 62.
func retxDue(t0, T int64, k uint8) int64 {
	mult := int64(1)<<(k+1) - 1
	if T > 0 && T > (math.MaxInt64-t0)/mult {
		return math.MaxInt64
	}
	return t0 + T*mult
}
