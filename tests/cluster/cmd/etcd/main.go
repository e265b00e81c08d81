// Command etcd is the etcd server, built from the etcd version that
// k8s.io/kubernetes v1.36.3 itself depends on.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
