//go:build tools

// Package tools pins the JobSet controller manager (which runs the JobSets a Kubeflow Trainer TrainJob becomes).
// It has its own module: JobSet v0.11.1 builds against controller-runtime v0.22, and Trainer v2.2.0 (beside it in
// ../trainer) requires v0.23, whose webhook builder JobSet's code does not compile against.
package tools

import (
	_ "sigs.k8s.io/jobset"
)
