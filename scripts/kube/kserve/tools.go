//go:build tools

// Package tools pins the KServe controller manager this module builds.
package tools

import _ "github.com/kserve/kserve/cmd/manager"
