// The sandbox ("pause") container of the local node: it holds the pod's namespaces open and
// does nothing else. Built here because no registry serves registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// As PID 1 of the pod, reap children that are re-parented to it.
	signal.Ignore(syscall.SIGCHLD)
	<-stop
}
