"""scope_site's URLs with the benchmark's endpoints mounted, as SCOPE_ENABLE_NOOP_ENDPOINT mounts them."""

from scope_site.noop import noop_urlpatterns
from scope_site.urls import urlpatterns as site_urlpatterns

urlpatterns = [*site_urlpatterns, *noop_urlpatterns()]
