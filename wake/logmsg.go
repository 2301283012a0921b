package wake

// Log messages that tools read back from neonproxy's JSON log (bench/
// counts them), kept in one place so a rewording cannot silently break
// them.
const (
	LogMaterialized = "data directory materialized"
	LogReplayingWAL = "replaying WAL from the keepers on top of the stored image"
	LogStartFailed  = "compute start failed"
)
