package server

import (
	"crypto/tls"
	"path/filepath"

	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/proxy"
)

type proxyTLS struct{ config *tls.Config }

// loadTLS loads tls.cert_file/key_file or the development certificate
// generated into <data_dir>/tls/.
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
