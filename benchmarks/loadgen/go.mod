module mlplatform/benchmarks/loadgen

go 1.26
