package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"text/tabwriter"

	"github.com/raftquota/raftquota/raftstore/state"
	"github.com/spf13/cobra"
)

// poolCommand is `caddy quota pool ...`: shared quotas through the admin
// API at *address.
func poolCommand(address *string) *cobra.Command {
	pool := &cobra.Command{Use: "pool", Short: "Manages pools (quotas shared by tokens) through the admin API"}

	create := &cobra.Command{Use: "create NAME", Short: "Creates a pool", Args: cobra.ExactArgs(1)}
	limit := create.Flags().Int64("limit", 0, "uploads allowed (0 = unlimited)")
	bytesLimit := create.Flags().Int64("bytes-limit", 0, "bytes allowed (0 = unlimited)")
	renew := create.Flags().Duration("renew-every", 0, "reset usage at every window of this length")
	calendar := create.Flags().String("renew-calendar", "", `reset usage on the UTC calendar: "monthly [on DAY] [at HH:MM]", "weekly [on WEEKDAY]", "daily [at HH:MM]"`)
	create.RunE = func(_ *cobra.Command, args []string) error {
		body := map[string]any{"name": args[0], "usage_limit": *limit, "bytes_limit": *bytesLimit}
		if *renew > 0 {
			body["renew_every"] = renew.String()
		}
		if *calendar != "" {
			body["renew_calendar"] = *calendar
		}
		return adminCall(*address, http.MethodPost, "/quota/pools", body)
	}

	update := &cobra.Command{Use: "update-limit POOL", Short: "Changes a pool's limits", Args: cobra.ExactArgs(1)}
	newLimit := update.Flags().Int64("limit", -1, "new upload limit (0 = unlimited)")
	newBytes := update.Flags().Int64("bytes-limit", -1, "new byte limit (0 = unlimited)")
	update.RunE = func(_ *cobra.Command, args []string) error {
		body, err := limitUpdate(*newLimit, *newBytes)
		if err != nil {
			return err
		}
		return onPool(*address, args[0], poolCall{http.MethodPatch, "", body})
	}

	list := &cobra.Command{Use: "list", Short: "Lists pools as a table", Args: cobra.NoArgs}
	asJSON := list.Flags().Bool("json", false, "print JSON instead of a table")
	list.RunE = func(*cobra.Command, []string) error {
		if *asJSON {
			return adminCall(*address, http.MethodGet, "/quota/pools", nil)
		}
		return listPools(*address)
	}

	pool.AddCommand(create, update, list,
		&cobra.Command{Use: "show POOL", Short: "Shows a pool (by id, or by name)", Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
			return onPool(*address, args[0], poolCall{method: http.MethodGet})
		}},
		&cobra.Command{Use: "reset POOL", Short: "Sets a pool's usage back to zero", Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
			return onPool(*address, args[0], poolCall{http.MethodPost, "/reset", nil})
		}},
		&cobra.Command{Use: "delete POOL", Short: "Deletes a pool no token belongs to", Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
			return onPool(*address, args[0], poolCall{method: http.MethodDelete})
		}},
		&cobra.Command{Use: "tokens POOL", Short: "Lists the tokens of a pool (JSON)", Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
			return onPool(*address, args[0], poolCall{http.MethodGet, "/tokens", nil})
		}},
	)
	return pool
}

// poolCall is one admin API call on a pool: the method, the path after
// the pool's, and the body (nil: none).
type poolCall struct {
	method, suffix string
	body           any
}

// onPool makes call on the pool an operator named (id or name).
func onPool(address, pool string, call poolCall) error {
	id, err := resolvePool(address, pool)
	if err != nil {
		return err
	}
	return adminCall(address, call.method, "/quota/pools/"+id+call.suffix, call.body)
}

// resolvePool turns a pool's id or name into its id.
func resolvePool(address, pool string) (string, error) {
	return resolveID(address, "/quota/pools/", pool, state.IsPoolID(pool))
}

// resolvePools turns pool ids or names into ids.
func resolvePools(address string, pools []string) ([]string, error) {
	ids := make([]string, 0, len(pools))
	for _, p := range pools {
		id, err := resolvePool(address, p)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func listPools(address string) error {
	out, err := adminDo(address, http.MethodGet, "/quota/pools", nil)
	if err != nil {
		return err
	}
	var list PoolList
	if err := json.Unmarshal(out, &list); err != nil {
		return fmt.Errorf("pool list answered %q", out)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tUPLOADS\tBYTES\tTOKENS")
	for _, p := range list.Pools {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", p.ID, p.Name, p.Status, usedOf(p.UsageCount, p.UsageLimit), usedOf(p.BytesUsed, p.BytesLimit), p.Tokens)
	}
	return tw.Flush()
}
