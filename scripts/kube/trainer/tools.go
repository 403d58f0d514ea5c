//go:build tools

// Package tools pins the Kubeflow Trainer controller manager this module builds (JobSet's is in ../jobset).
package tools

import (
	_ "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"
)
