"""The operator, auditor and viewer groups. Auditors and viewers get view permissions only."""

from django.db import migrations

APPS = ("providers", "routing", "feedback")


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    scoped = Permission.objects.filter(content_type__app_label__in=APPS)
    operator, _ = Group.objects.get_or_create(name="operator")
    operator.permissions.set(scoped)
    auditor, _ = Group.objects.get_or_create(name="auditor")
    auditor.permissions.set(scoped.filter(codename__startswith="view_"))
    viewer, _ = Group.objects.get_or_create(name="viewer")
    viewer.permissions.set([])


def drop_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["operator", "auditor", "viewer"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0001_initial"),
        ("providers", "0001_initial"),
        ("feedback", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, drop_roles)]
