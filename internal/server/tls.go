package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/proxy"
)

type proxyTLS struct{ config *tls.Config }

// loadTLS loads tls.cert_file/key_file or the development certificate
// generated into <data_dir>/tls/.
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

func loadTLS(cfg config.Config) (*proxyTLS, error) {
	cert, key, err := proxy.TLSFiles(cfg.TLS.CertFile, cfg.TLS.KeyFile, filepath.Join(cfg.DataDir, "tls"), cfg.TLS.SNISuffix)
	if err != nil {
		return nil, err
	}
	c, err := proxy.LoadTLS(cert, key)
	if err != nil {
		return nil, err
	}
	return &proxyTLS{config: c}, nil
}
