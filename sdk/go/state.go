//go:build wasip1

package wasmgate

// State shared by every worker and replica of the gateway: counters in
// fixed windows, and a small key-value store. Keys are this processor's
// own. When the gateway's state backend fails, the processor fails with
// state_unavailable, and when a write would pass its state_quota, with
// state_quota, by its failure mode: these calls return no errors.

// CounterAdd adds delta to a counter atomically and returns it. A counter
// lives in a window of windowMs from its first add, then starts again from
// 0. With a limit (nil for none), the delta is added only if the value
// stays at or under it.
func CounterAdd(key string, delta int64, windowMs uint32, limit *int64) Counter {
	return counterAdd(key, delta, windowMs, limit)
}

// StateGet returns a value (at most 64 KiB), if it is there.
func StateGet(key string) ([]byte, bool) { return kvGet(key) }

// StateSet sets a value for ttlMs milliseconds (0: until deleted).
func StateSet(key string, value []byte, ttlMs uint32) { kvSet(key, value, ttlMs) }

// StateDelete removes a value.
func StateDelete(key string) { kvDelete(key) }
