// Package plots draws the report's PNG figures with gonum/plot.
package plots

import (
	"fmt"
	"image/color"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Series is one named set of lateness samples.
type Series struct {
	Name    string
	Samples []time.Duration
	Dashed  bool
}

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // blue
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // red
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, // green
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, // orange
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, // purple
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}, // brown
	color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}, // grey
}

// LatenessCDF writes the cumulative distribution of each series' lateness
// on a logarithmic seconds axis, with the targets as vertical lines.
func LatenessCDF(path, title string, series []Series, targets map[string]float64) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "lateness after the deadline (seconds, log scale)"
	p.Y.Label.Text = "fraction of approvals expired"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = secondsTicks{}
	p.X.Min, p.X.Max = 0.01, 100
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = 8
	p.Legend.YOffs = -8
	for i, s := range series {
		if len(s.Samples) == 0 {
			continue
		}
		sorted := slices.Clone(s.Samples)
		slices.Sort(sorted)
		const points = 1500
		var xys plotter.XYs
		for k := range points + 1 {
			q := float64(k) / points
			idx := min(int(q*float64(len(sorted)-1)), len(sorted)-1)
			x := max(sorted[idx].Seconds(), 0.0101)
			xys = append(xys, plotter.XY{X: x, Y: float64(idx+1) / float64(len(sorted))})
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		l.Color = palette[i%len(palette)]
		l.Width = vg.Points(2)
		if s.Dashed {
			l.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		}
		p.Add(l)
		p.Legend.Add(s.Name, l)
	}
	names := make([]string, 0, len(targets))
	for n := range targets {
		names = append(names, n)
	}
	slices.Sort(names)
	for i, n := range names {
		x := targets[n]
		l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: 1}})
		if err != nil {
			return err
		}
		l.Color = color.Gray{Y: 0x60}
		l.Width = vg.Points(1)
		l.Dashes = []vg.Length{vg.Points(2), vg.Points(2 + float64(i))}
		p.Add(l)
		p.Legend.Add(n, l)
	}
	return p.Save(9*vg.Inch, 5.5*vg.Inch, path)
}

// secondsTicks labels decades: 0.01, 0.1, 1, 10, 100, with minor ticks.
type secondsTicks struct{}

func (secondsTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for d := 0.001; d <= hi*1.0001; d *= 10 {
		for m := 1; m < 10; m++ {
			v := d * float64(m)
			if v < lo*0.9999 || v > hi*1.0001 {
				continue
			}
			if m == 1 {
				ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64) + " s"})
			} else {
				ts = append(ts, plot.Tick{Value: v})
			}
		}
	}
	return ts
}

// Group is one group of bars: one value per series.
type Group struct {
	Label  string
	Values []float64
}

// Bars writes grouped bars: groups along X, one bar per series in each.
// Values are plotted divided by scale and labelled with unit. A target
// above 0 (in plotted units) is drawn as a dashed horizontal line.
func Bars(path, title, unit string, series []string, groups []Group, scale, target float64) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	labels := make([]string, len(groups))
	for i, g := range groups {
		labels[i] = g.Label
	}
	w := vg.Points(min(40, 300/float64(len(groups)*len(series))))
	var ymax float64
	for s := range series {
		vals := make(plotter.Values, len(groups))
		for i, g := range groups {
			if s < len(g.Values) {
				vals[i] = g.Values[s] / scale
				ymax = max(ymax, vals[i])
			}
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		b.LineStyle.Width = vg.Length(0)
		b.Color = palette[s%len(palette)]
		b.Offset = vg.Length(float64(s)-float64(len(series)-1)/2) * w
		p.Add(b)
		p.Legend.Add(series[s], b)
		// Value labels above the bars.
		var xys []plotter.XY
		var txt []string
		for i := range groups {
			xys = append(xys, plotter.XY{X: float64(i), Y: vals[i]})
			txt = append(txt, formatValue(vals[i]))
		}
		lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: txt})
		if err != nil {
			return err
		}
		for i := range lb.TextStyle {
			lb.TextStyle[i].XAlign = draw.XCenter
			lb.TextStyle[i].YAlign = draw.YBottom
		}
		lb.Offset = vg.Point{X: b.Offset, Y: vg.Points(1)}
		p.Add(lb)
	}
	if target > 0 {
		l, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: target}, {X: float64(len(groups)) - 0.5, Y: target}})
		if err != nil {
			return err
		}
		l.Color = color.Gray{Y: 0x40}
		l.Width = vg.Points(1.5)
		l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		p.Add(l)
		p.Legend.Add("target "+strconv.FormatFloat(target, 'f', -1, 64)+" "+unit, l)
		ymax = max(ymax, target)
	}
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -0.6, float64(len(groups))-0.4
	p.Y.Max = ymax * 1.3
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = 8
	return p.Save(vg.Length(max(7, 1.6*float64(len(groups))))*vg.Inch, 5*vg.Inch, path)
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// Line is one named series of a history plot: a value per run.
type Line struct {
	Name   string
	Values []float64 // one per run; NaN where the run did not measure it
	Target float64   // drawn as a dashed line of the same colour when > 0
}

// History writes one line per series over the runs, labelled along X, each
// point a run. A run a series lacks (NaN) is left out of its line.
func History(path, title, unit string, runs []string, lines []Line) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	var ymax float64
	for i, l := range lines {
		var xys plotter.XYs
		for k, v := range l.Values {
			if v == v { // not NaN
				xys = append(xys, plotter.XY{X: float64(k), Y: v})
				ymax = max(ymax, v)
			}
		}
		if len(xys) == 0 {
			continue
		}
		ln, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		c := palette[i%len(palette)]
		ln.Color, pts.Color = c, c
		ln.Width = vg.Points(1.5)
		p.Add(ln, pts)
		p.Legend.Add(l.Name, ln, pts)
		if l.Target > 0 {
			t, err := plotter.NewLine(plotter.XYs{{X: -0.3, Y: l.Target}, {X: float64(len(runs)) - 0.7, Y: l.Target}})
			if err != nil {
				return err
			}
			t.Color = c
			t.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			p.Add(t)
			ymax = max(ymax, l.Target)
		}
	}
	p.NominalX(runs...)
	p.X.Min, p.X.Max = -0.5, float64(len(runs))-0.5
	p.Y.Max = ymax * 1.6
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = 8
	p.Legend.YOffs = -12
	return p.Save(vg.Length(max(7, 1.2*float64(len(runs))))*vg.Inch, 5*vg.Inch, path)
}
