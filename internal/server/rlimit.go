package server

import (
	"syscall"

	"go.uber.org/zap"
)

// raiseFileLimit raises the soft limit on open files to the hard limit:
// every client and every server connection is a descriptor, and the usual
// soft default (1024) would refuse the 1,025th client. It says what it did,
// or why it could not, with the limit that then bounds max_client_conn.
func raiseFileLimit(log *zap.Logger, maxClients int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open-files limit", zap.Error(err))
		return
	}
	if lim.Cur < lim.Max {
		old := lim.Cur
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			log.Warn("cannot raise the open-files limit; clients beyond it are refused",
				zap.Uint64("limit", old), zap.Uint64("hard_limit", lim.Max), zap.Error(err))
			return
		}
		log.Info("open-files limit raised", zap.Uint64("from", old), zap.Uint64("to", lim.Cur))
	}
	// Each client may need a server connection too.
	if need := uint64(2*maxClients) + 256; lim.Cur < need {
		log.Warn("the open-files limit is below what pool.max_client_conn needs (two descriptors per client); raise the hard limit (ulimit -Hn, LimitNOFILE=)",
			zap.Uint64("limit", lim.Cur), zap.Uint64("needed", need), zap.Int("max_client_conn", maxClients))
	}
}
