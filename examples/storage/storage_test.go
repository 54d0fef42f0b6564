package storage

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func TestAbsolutePathArgumentIsRefused(t *testing.T) {
	adapt := func(site string) error {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":9000 {\n"+site+"\n}\n"), nil)
		return err
	}
	if err := adapt("s3_storage /var/lib/s3.db"); err == nil || !strings.Contains(err.Error(), "path matcher") {
		t.Fatalf("absolute path argument: %v", err)
	}
	for _, ok := range []string{"s3_storage", "s3_storage ./data/s3.db", "s3_storage {\n\tpath /var/lib/s3.db\n}", "s3_storage /bucket/* {\n\tpath /tmp/x.db\n}"} {
		if err := adapt(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}
