package server

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"github.com/xdg-go/scram"

	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/proxy"
	"github.com/neonproxy/neonproxy/wake"
	"github.com/neonproxy/neonproxy/walkeeper"
)

type proxyTLS struct {
	config   *tls.Config
	cert     *proxy.Certificate
	certFile string
	keyFile  string
}

// loadNodeTLS is the client side of TLS between nodes (consul.node_ca_file;
// nil without one).
func loadNodeTLS(cfg config.Config) (*tls.Config, error) {
	if cfg.Consul.NodeCAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(cfg.Consul.NodeCAFile)
	if err != nil {
		return nil, fmt.Errorf("consul.node_ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("consul.node_ca_file %s: no PEM certificate in it", cfg.Consul.NodeCAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// loadTLS loads tls.cert_file/key_file or the development certificate
// generated into <data_dir>/tls/.
func loadTLS(cfg config.Config) (*proxyTLS, error) {
	certFile, keyFile, err := proxy.TLSFiles(cfg.TLS.CertFile, cfg.TLS.KeyFile, filepath.Join(cfg.DataDir, "tls"), cfg.TLS.SNISuffix)
	if err != nil {
		return nil, err
	}
	c, err := proxy.LoadCertificate(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &proxyTLS{config: c.Config(), cert: c, certFile: certFile, keyFile: keyFile}, nil
}

// reload re-reads the certificate files (the same paths: rotation).
func (t *proxyTLS) reload() error { return t.cert.Reload(t.certFile, t.keyFile) }

// frontDoorAddr is this node's front door as other machines reach it:
// consul.node, else listen.
func frontDoorAddr(cfg config.Config) string {
	if cfg.Consul.Node != "" {
		return cfg.Consul.Node
	}
	return cfg.Listen
}

// keeperAccess lets the keepers stream this node's computes through the
// front door, proving walkeeper.token with SCRAM.
func keeperAccess(token string, drv *wake.PostgresDriver) (*proxy.ReplicationAccess, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	c, err := scram.SHA256.NewClient("", token, "")
	if err != nil {
		return nil, fmt.Errorf("walkeeper.token: %w", err)
	}
	return &proxy.ReplicationAccess{
		User:        walkeeper.ReplicationUser,
		Credentials: c.GetStoredCredentials(scram.KeyFactors{Salt: string(salt), Iters: 4096}),
		Endpoint: func(branch string) (wake.Endpoint, bool) {
			ep := wake.Endpoint{SocketDir: drv.SocketDir(branch), Port: wake.Port}
			_, err := os.Stat(ep.SocketPath())
			return ep, err == nil
		},
	}, nil
}
