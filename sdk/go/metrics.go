//go:build wasip1

package wasmgate

// Metric is a processor-defined Prometheus metric, exported by the gateway
// as wasmgate_guest_<processor>_<name> with a processor label. It is declared on first
// use; if the gateway refuses it (a bad name, say), the reason is logged
// once and records are dropped.
type Metric struct {
	Kind    MetricKind
	Name    string
	Help    string
	Labels  []string
	Buckets []float64 // for histograms; empty means the gateway's default buckets

	declared bool
	id       uint32
	ok       bool
}

// NewCounter, NewGauge and NewHistogram describe a metric for Record.
func NewCounter(name, help string, labels ...string) *Metric {
	return &Metric{Kind: KindCounter, Name: name, Help: help, Labels: labels}
}

func NewGauge(name, help string, labels ...string) *Metric {
	return &Metric{Kind: KindGauge, Name: name, Help: help, Labels: labels}
}

func NewHistogram(name, help string, buckets []float64, labels ...string) *Metric {
	return &Metric{Kind: KindHistogram, Name: name, Help: help, Labels: labels, Buckets: buckets}
}

// Record adds to a counter, sets a gauge or observes a histogram value;
// labelValues follow the declared labels' order.
func (m *Metric) Record(value float64, labelValues ...string) {
	if !m.declared {
		m.declared = true
		id, err := defineMetric(m.Kind, m.Name, m.Help, m.Labels, m.Buckets)
		if err != nil {
			log(LevelWarn, "metric "+m.Name+" not declared: "+err.Error())
		}
		m.id, m.ok = id, err == nil
	}
	if m.ok {
		recordMetric(m.id, labelValues, value)
	}
}
