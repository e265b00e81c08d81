// Command pause is the sandbox ("infra") container of every Pod on the local real node: it
// holds the Pod's namespaces, sleeps until it is stopped and reaps orphans when the Pod
// shares one PID namespace, as registry.k8s.io/pause does. It is built from source here
// because the local cluster never pulls from a registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// The only argument it knows; image builds run it to check that it starts.
	if len(os.Args) > 1 && os.Args[1] == "--help" {
		os.Stdout.WriteString("pause: holds a Pod's namespaces until SIGINT or SIGTERM\n")
		return
	}
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		reapChildren()
	}
}

func reapChildren() {
	for {
		pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
