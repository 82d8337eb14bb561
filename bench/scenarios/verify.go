package scenarios

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// VerifyResult is scenario 7's outcome: auditstream's BenchmarkVerifyExport
// run once on a synthetic export of Events events (sealed every 10,000).
type VerifyResult struct {
	Events int
	// Rate is events verified per second; Raw is the same file read and
	// decoded line by line without verifying, in the same run.
	Rate, Raw float64
	// PeakRSSMiB is the peak RSS of the verification alone; FileMiB the
	// export's size.
	PeakRSSMiB, FileMiB float64
}

// Verify measures scenario 7 by running the guardian module's
// BenchmarkVerifyExport (in root) and reading the metrics it reports.
func Verify(ctx context.Context, root string, events int) (VerifyResult, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkVerifyExport$", "-benchtime", "1x",
		"./pkg/auditstream/", "-args", "-verify.events="+strconv.Itoa(events))
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return VerifyResult{}, fmt.Errorf("go test -bench BenchmarkVerifyExport: %w\n%s", err, out)
	}
	r := VerifyResult{Events: events}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkVerifyExport") {
			continue
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "events/s":
				r.Rate = v
			case "raw-events/s":
				r.Raw = v
			case "peak-RSS-MiB":
				r.PeakRSSMiB = v
			case "file-MiB":
				r.FileMiB = v
			}
		}
	}
	if r.Rate == 0 || r.Raw == 0 {
		return VerifyResult{}, fmt.Errorf("no BenchmarkVerifyExport metrics in:\n%s", out)
	}
	return r, nil
}

// Rows returns scenario 7's rows.
func (r VerifyResult) Rows() []Row {
	const sc = "7 Audit verify"
	return []Row{
		{sc, fmt.Sprintf("VerifyExport of %d events (one pass, bounded memory)", r.Events), rate(r.Rate), rate(r.Raw) + " decode only",
			ratio(r.Rate, r.Raw), "≥ 0.8", check(r.Rate >= 0.8*r.Raw)},
		{sc, "peak RSS of the verification", fmt.Sprintf("%.0f MiB", r.PeakRSSMiB), fmt.Sprintf("%.0f MiB export file", r.FileMiB), "", "", Info},
	}
}
