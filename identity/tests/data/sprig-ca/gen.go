// Command gen writes the Sprig-style CA fixtures beside it: what the Helm
// chart's fallback makes with
//
//	genCAWithKey "Trellis root (cluster.local)" 3650 (genPrivateKey "ecdsa")
//
// done the way Sprig v3 does it (crypto.go: generatePrivateKey,
// pemBlockForKey, generateCertificateAuthorityWithKeyInternal,
// getBaseCertTemplate), with Go's standard library only. One self-signed
// certificate is both the trust root and the issuer. The only departure:
// 36500 days instead of 3650, so the fixtures do not expire under the tests.
//
// Regenerate (no network needed) from this directory:
//
//	go run gen.go
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

const (
	commonName = "Trellis root (cluster.local)"
	daysValid  = 36500
)

func main() {
	// genPrivateKey "ecdsa": P-256, SEC1 "EC PRIVATE KEY". The chart's case.
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err)
	write("ecdsa-p256", p256)
	// Not a Sprig key type, but a common brought-your-own CA
	// (openssl ecparam -name secp384r1): SEC1 on P-384.
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	check(err)
	write("ecdsa-p384", p384)
	// genPrivateKey "rsa" (Sprig's default type): 4096 bits, PKCS#1
	// "RSA PRIVATE KEY".
	rsaKey, err := rsa.GenerateKey(rand.Reader, 4096)
	check(err)
	write("rsa", rsaKey)
	// genPrivateKey "ed25519": PKCS#8 "PRIVATE KEY".
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	check(err)
	write("ed25519", edKey)
}

// write makes dir/ca.crt and dir/ca.key for priv.
func write(dir string, priv crypto.Signer) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	check(err)
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName},
		IPAddresses:  nil,
		DNSNames:     []string{},
		NotBefore:    time.Now(),
		NotAfter:     time.Now().Add(time.Hour * 24 * time.Duration(daysValid)),
		// getBaseCertTemplate's usages, then the CA override.
		KeyUsage: x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature |
			x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{
			x509.ExtKeyUsageServerAuth,
			x509.ExtKeyUsageClientAuth,
		},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, priv.Public(), priv)
	check(err)
	check(os.MkdirAll(dir, 0o755))
	check(os.WriteFile(filepath.Join(dir, "ca.crt"),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	check(os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(keyBlock(priv)), 0o644))
}

// keyBlock is Sprig's pemBlockForKey for the key types above.
func keyBlock(priv crypto.Signer) *pem.Block {
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		return &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
	case *ecdsa.PrivateKey:
		b, err := x509.MarshalECPrivateKey(k)
		check(err)
		return &pem.Block{Type: "EC PRIVATE KEY", Bytes: b}
	default:
		b, err := x509.MarshalPKCS8PrivateKey(k)
		check(err)
		return &pem.Block{Type: "PRIVATE KEY", Bytes: b}
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
