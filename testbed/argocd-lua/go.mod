// argocd-lua for the tests: runs a resource health script the way Argo CD
// does, in its own module so its dependencies stay out of the other builds.
// gopher-lua and gopher-json are the versions Argo CD's go.mod pins.
module tracing-operator/testbed/argocd-lua

go 1.26

require (
	github.com/yuin/gopher-lua v1.1.2
	layeh.com/gopher-json v0.0.0-20190114024228-97fed8db8427
)
