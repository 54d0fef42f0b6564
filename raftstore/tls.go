package raftstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// TLSFiles names the PEM files for mutual TLS between nodes: this node's
// certificate and key, and the cluster CA that every peer's certificate must
// chain to.
type TLSFiles struct {
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
	CAFile   string `json:"ca_file"`
}

// tlsMaterial is one loaded set of files.
type tlsMaterial struct {
	cert tls.Certificate
	pool *x509.CertPool
}

// CheckTLS reads and checks the files without using them, so a config can
// be refused before anything changes.
func CheckTLS(files TLSFiles) error {
	_, err := loadTLS(files)
	return err
}

func loadTLS(files TLSFiles) (*tlsMaterial, error) {
	if files.CertFile == "" || files.KeyFile == "" || files.CAFile == "" {
		return nil, errors.New("tls needs a certificate, a key and a CA file")
	}
	cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("loading node certificate: %w", err)
	}
	caPEM, err := os.ReadFile(files.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("cluster CA file %s holds no PEM certificate", files.CAFile)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("node certificate does not chain to the cluster CA for both server and client use: %w", err)
	}
	return &tlsMaterial{cert: cert, pool: pool}, nil
}

// TLSStreamLayer is a raft.StreamLayer that speaks mutual TLS 1.3: both ends
// present a certificate from the cluster CA, or the connection is dropped
// before a byte of Raft or forwarding traffic is read. Peers are
// authenticated as members of the cluster (any certificate of the cluster
// CA), not by host name, since a node may be dialed through NAT or a proxy.
// Reload swaps the files in use without closing the listener or Raft.
type TLSStreamLayer struct {
	tcp *tcpLayer
	mat atomic.Pointer[tlsMaterial]
}

// NewTLSStreamLayer listens on bind (advertising advertise) with the given files.
func NewTLSStreamLayer(bind, advertise string, files TLSFiles) (*TLSStreamLayer, error) {
	mat, err := loadTLS(files)
	if err != nil {
		return nil, err
	}
	base, err := NewTCPStreamLayer(bind, advertise)
	if err != nil {
		return nil, err
	}
	l := &TLSStreamLayer{tcp: base.(*tcpLayer)}
	l.mat.Store(mat)
	return l, nil
}

// Reload starts using new files for new connections; open ones keep theirs.
func (l *TLSStreamLayer) Reload(files TLSFiles) error {
	mat, err := loadTLS(files)
	if err != nil {
		return err
	}
	l.mat.Store(mat)
	return nil
}

func (l *TLSStreamLayer) verify(rawCerts [][]byte, usage x509.ExtKeyUsage) error {
	if len(rawCerts) == 0 {
		return errors.New("peer presented no certificate")
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: l.mat.Load().pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func (l *TLSStreamLayer) config(server bool) *tls.Config {
	mat := l.mat.Load()
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{mat.cert},
		// Chains are checked in VerifyPeerCertificate against the current
		// CA, without host names (see the type's comment).
		InsecureSkipVerify: true,
	}
	if server {
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			return l.verify(raw, x509.ExtKeyUsageClientAuth)
		}
	} else {
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			return l.verify(raw, x509.ExtKeyUsageServerAuth)
		}
	}
	return cfg
}

// Accept returns the next connection; its TLS handshake runs on first use,
// so a slow or hostile peer never blocks the accept loop.
func (l *TLSStreamLayer) Accept() (net.Conn, error) {
	c, err := l.tcp.Accept()
	if err != nil {
		return nil, err
	}
	return tls.Server(c, l.config(true)), nil
}

// Dial connects to a peer and completes the handshake within timeout.
func (l *TLSStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := l.tcp.Dial(address, timeout)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, l.config(false))
	tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", address, err)
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

func (l *TLSStreamLayer) Close() error   { return l.tcp.Close() }
func (l *TLSStreamLayer) Addr() net.Addr { return l.tcp.Addr() }

var _ raft.StreamLayer = (*TLSStreamLayer)(nil)
