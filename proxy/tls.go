package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// TLSFiles returns the certificate and key to serve: the configured pair,
// or a self-signed development certificate for *.<sniSuffix>, <sniSuffix>,
// localhost, 127.0.0.1 and ::1 that is generated into dir at first start and
// reused afterwards (so clients that pin it keep working across restarts).
func TLSFiles(certFile, keyFile, dir, sniSuffix string) (cert, key string, err error) {
	if certFile != "" || keyFile != "" {
		return certFile, keyFile, nil
	}
	cert, key = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	_, errC := os.Stat(cert)
	_, errK := os.Stat(key)
	if errC == nil && errK == nil {
		return cert, key, nil
	}
	if err := generateSelfSigned(cert, key, dir, sniSuffix); err != nil {
		return "", "", fmt.Errorf("generate development TLS certificate in %s: %w", dir, err)
	}
	return cert, key, nil
}

// Certificate is the front door's certificate, replaceable while serving
// (SIGHUP re-reads the files: certificate rotation without dropping a
// connection; each handshake takes the newest).
type Certificate struct {
	p atomic.Pointer[tls.Certificate]
}

// LoadCertificate reads a PEM certificate and key.
func LoadCertificate(certFile, keyFile string) (*Certificate, error) {
	c := &Certificate{}
	return c, c.Reload(certFile, keyFile)
}

// Reload re-reads the files; on error the current certificate stays.
func (c *Certificate) Reload(certFile, keyFile string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load TLS key pair %s, %s: %w", certFile, keyFile, err)
	}
	if pair.Leaf == nil && len(pair.Certificate) > 0 {
		pair.Leaf, _ = x509.ParseCertificate(pair.Certificate[0])
	}
	c.p.Store(&pair)
	return nil
}

// Config is the server TLS configuration serving the current certificate.
// TLS 1.2 is the floor, as for PostgreSQL's default
// ssl_min_protocol_version.
func (c *Certificate) Config() *tls.Config {
	return &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.p.Load(), nil },
		MinVersion:     tls.VersionTLS12,
	}
}

// currentCert is the certificate cfg serves now.
func currentCert(cfg *tls.Config) *tls.Certificate {
	switch {
	case cfg == nil:
		return nil
	case cfg.GetCertificate != nil:
		c, _ := cfg.GetCertificate(&tls.ClientHelloInfo{})
		return c
	case len(cfg.Certificates) > 0:
		return &cfg.Certificates[0]
	}
	return nil
}

func generateSelfSigned(certPath, keyPath, dir, sniSuffix string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	names := []string{"localhost"}
	if sniSuffix != "" {
		names = append(names, "*."+sniSuffix, sniSuffix)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names[len(names)-1], Organization: []string{"neonproxy development"}},
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return errors.Join(err, os.Remove(tmp))
	}
	return nil
}
