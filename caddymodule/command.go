package caddymodule

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/raftquota/raftquota/internal/clustercert"
	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "quota",
		Usage: "certs|token|cluster|member|health|backup|restore ...",
		Short: "Makes cluster certificates and manages raftquota tokens",
		Long: `
Makes the certificates a raftquota cluster's nodes use to authenticate each
other, and manages tokens through a running node's admin API, so operators
need no hand-written curl.

  caddy quota certs --dir certs node1=127.0.0.1 node2=127.0.0.1 node3=127.0.0.1
  caddy quota token create team-a --limit 100 [--bytes-limit N] [--renew-every 24h]
  caddy quota token create --generate --limit 100     # prints a new secret name, once
  caddy quota token show TOKEN                         # TOKEN: an id, or a name
  caddy quota token list [--status exhausted] [--remaining-below 10] [--created-by ops] [--json]
  caddy quota token update-limit TOKEN --limit 200
  caddy quota token revoke|reactivate|reset|delete TOKEN
  caddy quota cluster
  caddy quota member add node4 127.0.0.1:7004
  caddy quota member remove node4
  caddy quota health
  caddy quota backup quota.backup
  caddy quota restore quota.backup --data-dir DIR --node-id node1 --peer node1=127.0.0.1:7001 ...

Token, cluster, member, health and backup commands talk to the admin
endpoint given by --address (default: Caddy's, localhost:2019). restore
works offline, on a data dir of a node that is not running.`,
		CobraFunc: quotaCommand,
	})
}

func quotaCommand(cmd *cobra.Command) {
	address := new(string)
	cmd.PersistentFlags().StringVar(address, "address", "", "admin API address of a running node (default localhost:2019), or https://HOST:PORT for Caddy's remote admin")
	cmd.PersistentFlags().StringVar(&remote.cert, "cert", "", "with an https:// address: the operator's client certificate (PEM)")
	cmd.PersistentFlags().StringVar(&remote.key, "key", "", "with an https:// address: its private key (PEM)")
	cmd.PersistentFlags().StringVar(&remote.ca, "ca", "", "with an https:// address: the CA that signed the admin endpoint's certificate (PEM; default: the system's)")
	cmd.AddCommand(certsCommand(), tokenCommand(address), poolCommand(address))
	cmd.AddCommand(clusterCommands(address)...)
	cmd.AddCommand(dataCommands(address)...)
}

// certsCommand is `caddy quota certs`: the cluster CA and node certificates.
func certsCommand() *cobra.Command {
	certs := &cobra.Command{
		Use:   "certs --dir DIR ID=HOST[,HOST...] ...",
		Short: "Makes a cluster CA (or reuses the one in DIR) and a certificate per node",
		Args:  cobra.MinimumNArgs(1),
	}
	dir := certs.Flags().String("dir", "certs", "folder for ca.pem, ca-key.pem, ID.pem and ID-key.pem")
	valid := certs.Flags().Duration("valid", 365*24*time.Hour, "how long node certificates are valid")
	certs.RunE = func(_ *cobra.Command, args []string) error {
		var nodes []clustercert.Node
		for _, a := range args {
			id, hosts, ok := strings.Cut(a, "=")
			if !ok || id == "" || hosts == "" {
				return fmt.Errorf("node %q: write ID=HOST[,HOST...], e.g. node1=127.0.0.1", a)
			}
			nodes = append(nodes, clustercert.Node{ID: id, Hosts: strings.Split(hosts, ",")})
		}
		if err := clustercert.Generate(*dir, nodes, *valid); err != nil {
			return err
		}
		for _, n := range nodes {
			f := clustercert.NodeFiles(*dir, n.ID)
			fmt.Printf("%s: tls %s %s %s\n", n.ID, f.Cert, f.Key, f.CA)
		}
		return nil
	}

	return certs
}

// tokenCommand is `caddy quota token ...`.
func tokenCommand(address *string) *cobra.Command {
	token := &cobra.Command{Use: "token", Short: "Manages tokens through the admin API"}

	create := tokenCreateCommand(address)

	update := &cobra.Command{Use: "update-limit TOKEN", Short: "Changes a token's limits", Args: cobra.ExactArgs(1)}
	newLimit := update.Flags().Int64("limit", -1, "new upload limit (0 = unlimited)")
	newBytes := update.Flags().Int64("bytes-limit", -1, "new byte limit (0 = unlimited)")
	update.RunE = func(_ *cobra.Command, args []string) error {
		body, err := limitUpdate(*newLimit, *newBytes)
		if err != nil {
			return err
		}
		id, err := resolveToken(*address, args[0])
		if err != nil {
			return err
		}
		return adminCall(*address, http.MethodPatch, "/quota/tokens/"+id, body)
	}

	list := &cobra.Command{Use: "list", Short: "Lists tokens as a table (no secrets)", Args: cobra.NoArgs}
	status := list.Flags().String("status", "", "only tokens with this status: active, exhausted, revoked")
	below := list.Flags().Int64("remaining-below", 0, "only tokens with fewer uploads left than this")
	by := list.Flags().String("created-by", "", "only tokens made by this creator")
	asJSON := list.Flags().Bool("json", false, "print the pages as JSON instead of a table")
	list.RunE = func(*cobra.Command, []string) error {
		return listTokens(*address, listQuery(*status, *below, *by), *asJSON)
	}

	token.AddCommand(create, update, list,
		&cobra.Command{Use: "show TOKEN", Short: "Shows a token (by id, or by name)", Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
			id, err := resolveToken(*address, args[0])
			if err != nil {
				return err
			}
			return adminCall(*address, http.MethodGet, "/quota/tokens/"+id, nil)
		}},
		&cobra.Command{Use: "delete TOKEN", Short: "Deletes a token", Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
			id, err := resolveToken(*address, args[0])
			if err != nil {
				return err
			}
			return adminCall(*address, http.MethodDelete, "/quota/tokens/"+id, nil)
		}},
	)
	for _, action := range []string{"revoke", "reactivate", "reset"} {
		token.AddCommand(&cobra.Command{Use: action + " TOKEN", Short: "Runs " + action + " on a token", Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				id, err := resolveToken(*address, args[0])
				if err != nil {
					return err
				}
				return adminCall(*address, http.MethodPost, "/quota/tokens/"+id+"/"+action, nil)
			}})
	}

	return token
}

// tokenCreateCommand is `caddy quota token create`.
func tokenCreateCommand(address *string) *cobra.Command {
	create := &cobra.Command{Use: "create [NAME]", Short: "Creates a token (--generate: with a new random name)", Args: cobra.MaximumNArgs(1)}
	generate := create.Flags().Bool("generate", false, "make a high-entropy name (printed once) instead of giving one")
	limit := create.Flags().Int64("limit", 0, "uploads allowed (0 = unlimited)")
	bytesLimit := create.Flags().Int64("bytes-limit", 0, "bytes allowed (0 = unlimited)")
	renew := create.Flags().Duration("renew-every", 0, "reset usage at every window of this length")
	expires := create.Flags().String("expires-at", "", "RFC 3339 time after which the token is refused")
	createdBy := create.Flags().String("created-by", "", "who made it")
	inPools := create.Flags().StringArray("pool", nil, "a pool (id or name) the token draws on; repeatable, up to 4")
	calendar := create.Flags().String("renew-calendar", "", `reset usage on the UTC calendar: "monthly [on DAY] [at HH:MM]", "weekly [on WEEKDAY]", "daily [at HH:MM]"`)
	create.RunE = func(_ *cobra.Command, args []string) error {
		body := map[string]any{"usage_limit": *limit, "bytes_limit": *bytesLimit}
		switch {
		case len(args) == 1 && *generate:
			return errors.New("give a NAME or --generate, not both")
		case len(args) == 1:
			body["name"] = args[0]
		case !*generate:
			return errors.New("give the token's NAME, or --generate for a new random one")
		}
		if *renew > 0 {
			body["renew_every"] = renew.String()
		}
		if *expires != "" {
			if _, err := time.Parse(time.RFC3339, *expires); err != nil {
				return fmt.Errorf("--expires-at: %v", err)
			}
			body["expires_at"] = *expires
		}
		if *createdBy != "" {
			body["created_by"] = *createdBy
		}
		if *calendar != "" {
			body["renew_calendar"] = *calendar
		}
		if len(*inPools) > 0 {
			ids, err := resolvePools(*address, *inPools)
			if err != nil {
				return err
			}
			body["pools"] = ids
		}
		return adminCall(*address, http.MethodPost, "/quota/tokens", body)
	}
	return create
}

// clusterCommands are `caddy quota cluster`, `member` and `health`.
func clusterCommands(address *string) []*cobra.Command {
	cluster := &cobra.Command{Use: "cluster", Short: "Shows the leader and members", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error {
		return adminCall(*address, http.MethodGet, "/quota/cluster", nil)
	}}
	member := &cobra.Command{Use: "member", Short: "Adds or removes a voter"}
	member.AddCommand(
		&cobra.Command{Use: "add ID ADDRESS", Short: "Adds a voter (start it with join first)", Args: cobra.ExactArgs(2), RunE: func(_ *cobra.Command, args []string) error {
			return adminCall(*address, http.MethodPost, "/quota/cluster/members", map[string]string{"id": args[0], "address": args[1]})
		}},
		&cobra.Command{Use: "remove ID", Short: "Removes a member", Args: cobra.ExactArgs(1), RunE: func(_ *cobra.Command, args []string) error {
			return adminCall(*address, http.MethodDelete, "/quota/cluster/members/"+url.PathEscape(args[0]), nil)
		}},
	)
	health := &cobra.Command{Use: "health", Short: "Says whether the node can decide (exit status 1 when not)", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error {
		return adminCall(*address, http.MethodGet, "/quota/health", nil)
	}}
	return []*cobra.Command{cluster, member, health}
}

// dataCommands are `caddy quota backup`, `restore` and `verify`.
func dataCommands(address *string) []*cobra.Command {
	backup := &cobra.Command{Use: "backup FILE", Short: "Writes a consistent backup of the cluster's state to FILE", Args: cobra.ExactArgs(1)}
	backup.RunE = func(_ *cobra.Command, args []string) error {
		return backupTo(*address, args[0])
	}
	restore := &cobra.Command{Use: "restore FILE --data-dir DIR --node-id ID --peer ID=ADDRESS ...", Short: "Seeds an empty data dir from a backup, as a node of a new cluster", Args: cobra.ExactArgs(1)}
	dataDir := restore.Flags().String("data-dir", "", "the node's data dir (data_dir in its config); must be empty")
	nodeID := restore.Flags().String("node-id", "", "the node's id (node_id in its config)")
	peers := restore.Flags().StringArray("peer", nil, "a voter of the new cluster, ID=HOST:PORT; repeat for each, this node included")
	restore.RunE = func(_ *cobra.Command, args []string) error {
		return restoreFrom(args[0], *dataDir, *nodeID, *peers)
	}
	verify := &cobra.Command{Use: "verify --data-dir DIR | --backup FILE", Short: "Checks a stopped node's data dir, or a backup file, offline (exit status 1 on damage)", Args: cobra.NoArgs}
	verifyDir := verify.Flags().String("data-dir", "", "a node's data dir (the node must be stopped)")
	verifyBackup := verify.Flags().String("backup", "", "a backup file")
	verify.RunE = func(*cobra.Command, []string) error {
		return verifyOffline(*verifyDir, *verifyBackup)
	}
	return []*cobra.Command{backup, restore, verify}
}

// backupTo saves a backup from the admin API into file, written to a
// temporary name first so a failed backup never leaves a partial file.
func backupTo(address, file string) error {
	resp, err := adminRequest(address, http.MethodGet, "/quota/backup", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	tmp := file + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		var in *os.File
		if in, err = os.Open(tmp); err == nil {
			var info raftstore.BackupInfo
			info, _, _, err = raftstore.ReadBackup(in)
			in.Close()
			if err == nil {
				fmt.Printf("backup of %d tokens (log index %d, from %s) written to %s\n", info.Tokens, info.Index, info.NodeID, file)
			}
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("backup: %w", err)
	}
	return os.Rename(tmp, file)
}

func restoreFrom(file, dataDir, nodeID string, peerArgs []string) error {
	if dataDir == "" || nodeID == "" || len(peerArgs) == 0 {
		return errors.New("give --data-dir, --node-id and a --peer ID=ADDRESS for every voter of the new cluster")
	}
	var peers []raftstore.Peer
	for _, p := range peerArgs {
		id, addr, ok := strings.Cut(p, "=")
		if !ok || id == "" || addr == "" {
			return fmt.Errorf("--peer %q: write ID=HOST:PORT, e.g. node1=127.0.0.1:7001", p)
		}
		peers = append(peers, raftstore.Peer{ID: id, Address: addr})
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := raftstore.RestoreBackup(f, dataDir, nodeID, peers)
	if err != nil {
		return err
	}
	fmt.Printf("%s: seeded %s with %d tokens from %s (taken %s); start the node with this data_dir and node_id\n",
		nodeID, dataDir, info.Tokens, file, info.CreatedAt.Format(time.RFC3339))
	return nil
}

// adminCall sends one request to the admin API and prints the answer.
func adminCall(address, method, path string, body any) error {
	out, err := adminDo(address, method, path, body)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(out)) == 0 {
		fmt.Println("ok")
		return nil
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, out, "", "  ") == nil {
		out = pretty.Bytes()
	}
	_, err = os.Stdout.Write(append(bytes.TrimSpace(out), '\n'))
	return err
}

// remote holds the client certificate flags for Caddy's remote admin.
var remote struct{ cert, key, ca string }

// remoteRequest sends one request to Caddy's remote admin endpoint (an
// https:// address) with the operator's client certificate.
func remoteRequest(address, method, path string, body io.Reader) (*http.Response, error) {
	if remote.cert == "" || remote.key == "" {
		return nil, errors.New("an https:// admin address is Caddy's remote admin: give --cert and --key (the operator's client certificate)")
	}
	cert, err := tls.LoadX509KeyPair(remote.cert, remote.key)
	if err != nil {
		return nil, fmt.Errorf("--cert/--key: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if remote.ca != "" {
		pem, err := os.ReadFile(remote.ca)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca: no PEM certificate in %s", remote.ca)
		}
	}
	req, err := http.NewRequest(method, strings.TrimRight(address, "/")+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("performing request: %w", err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return nil, fmt.Errorf("caddy responded with error: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
	}
	return resp, nil
}

// adminRequest sends one request to the local admin endpoint, or, for an
// https:// address, to the remote admin.
func adminRequest(address, method, path string, body io.Reader) (*http.Response, error) {
	if strings.HasPrefix(address, "https://") {
		return remoteRequest(address, method, path, body)
	}
	local, err := localAdminAddress(address)
	if err != nil {
		return nil, err
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(local, nil, "", "")
	if err != nil {
		return nil, err
	}
	return caddycmd.AdminAPIRequest(addr, method, path, nil, body)
}

// localAdminAddress is --address as Caddy's admin client takes it:
// HOST:PORT (or whatever else Caddy's own commands take), with an http://
// in front accepted as meaning the same. Anything else with a scheme is
// refused with the forms it could be.
func localAdminAddress(address string) (string, error) {
	if rest, ok := strings.CutPrefix(address, "http://"); ok {
		rest = strings.TrimSuffix(rest, "/")
		if rest == "" || strings.Contains(rest, "/") {
			return "", fmt.Errorf("--address %q: give HOST:PORT (http:// may lead it, with no path), or https://HOST:PORT for Caddy's remote admin", address)
		}
		return rest, nil
	}
	if strings.Contains(address, "://") {
		return "", fmt.Errorf("--address %q: give HOST:PORT, http://HOST:PORT, or https://HOST:PORT for Caddy's remote admin", address)
	}
	return address, nil
}

// adminDo sends one request to the admin API and returns the answer's body;
// an answer of 400 or more is an error carrying the body's message.
func adminDo(address, method, path string, body any) ([]byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	resp, err := adminRequest(address, method, path, r)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// resolveToken turns what an operator typed (a token id, or a name) into
// the token's id. A name goes only in a request body, never in a URL.
func resolveToken(address, token string) (string, error) {
	return resolveID(address, "/quota/tokens/", token, state.IsTokenID(token))
}

// resolveID turns what an operator typed for an object under base
// (/quota/tokens/ or /quota/pools/) into its id: as typed when it has an
// id's form (isID) and exists, else the id a lookup by name answers.
func resolveID(address, base, typed string, isID bool) (string, error) {
	if isID {
		if _, err := adminDo(address, http.MethodGet, base+typed, nil); err == nil {
			return typed, nil
		}
	}
	out, err := adminDo(address, http.MethodPost, base+"lookup", map[string]string{"name": typed})
	if err != nil {
		return "", err
	}
	var found struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(out, &found); err != nil || found.ID == "" {
		return "", fmt.Errorf("lookup answered %q", out)
	}
	return found.ID, nil
}

// limitUpdate is the body of an update-limit (token or pool): the limits
// given, -1 for a flag left out.
func limitUpdate(limit, bytesLimit int64) (map[string]any, error) {
	body := map[string]any{}
	if limit >= 0 {
		body["usage_limit"] = limit
	}
	if bytesLimit >= 0 {
		body["bytes_limit"] = bytesLimit
	}
	if len(body) == 0 {
		return nil, errors.New("give --limit and/or --bytes-limit")
	}
	return body, nil
}

// listQuery is the query of GET /quota/tokens for the list's flags.
func listQuery(status string, below int64, createdBy string) url.Values {
	q := url.Values{}
	if status != "" {
		q.Set("status", status)
	}
	if below > 0 {
		q.Set("remaining_below", fmt.Sprint(below))
	}
	if createdBy != "" {
		q.Set("created_by", createdBy)
	}
	return q
}

// listTokens prints every page of the token list q selects as a table (or
// as JSON).
func listTokens(address string, q url.Values, asJSON bool) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	if !asJSON {
		fmt.Fprintln(tw, "ID\tLABEL\tCREATED_BY\tSTATUS\tUSED/LIMIT\tBYTES USED/LIMIT\tEXPIRES")
	}
	for {
		out, err := adminDo(address, http.MethodGet, "/quota/tokens?"+q.Encode(), nil)
		if err != nil {
			return err
		}
		if asJSON {
			fmt.Println(string(bytes.TrimSpace(out)))
		}
		var page struct {
			Tokens     []state.Token `json:"tokens"`
			NextCursor string        `json:"next_cursor"`
		}
		if err := json.Unmarshal(out, &page); err != nil {
			return fmt.Errorf("reading the token list: %v", err)
		}
		for _, t := range page.Tokens {
			if asJSON {
				break
			}
			expires := "-"
			if t.ExpiresAt != nil {
				expires = t.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, orDash(t.Metadata["label"]), orDash(t.CreatedBy), t.Status,
				usedOf(t.UsageCount, t.UsageLimit), usedOf(t.BytesUsed, t.BytesLimit), expires)
		}
		if page.NextCursor == "" {
			break
		}
		q.Set("cursor", page.NextCursor)
	}
	return tw.Flush()
}

func usedOf(used, limit int64) string {
	if limit == 0 {
		return fmt.Sprintf("%d/unlimited", used)
	}
	return fmt.Sprintf("%d/%d", used, limit)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// verifyOffline prints what a data dir or backup check found; damage is
// the returned error (exit status 1).
func verifyOffline(dataDir, backupFile string) error {
	switch {
	case (dataDir == "") == (backupFile == ""):
		return errors.New("give --data-dir DIR or --backup FILE")
	case backupFile != "":
		f, err := os.Open(backupFile)
		if err != nil {
			return err
		}
		defer f.Close()
		info, toks, _, err := raftstore.ReadBackup(f)
		if err != nil {
			return fmt.Errorf("%s is damaged: %w", backupFile, err)
		}
		fmt.Printf("%s: ok: %d tokens, log index %d, from node %s at %s\n", backupFile, len(toks), info.Index, info.NodeID, info.CreatedAt.Format(time.RFC3339))
		return nil
	}
	c, err := raftstore.VerifyDataDir(dataDir)
	for _, l := range c.Lines {
		fmt.Println(l)
	}
	if err != nil {
		return err
	}
	fmt.Println("ok: no damage found")
	return nil
}
